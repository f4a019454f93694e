"""Run every benchmark and write docs/benchmarks.md (regenerated whole).

    python bench/run_all.py            # `make bench`: every section, full size
    python bench/run_all.py --quick    # `make bench-quick`: reduced sizes, under ~2 minutes on 2 idle cores
    python bench/run_all.py --only many_students,trainer_stall   # rerun some; keep the others' last results

Each section runs as its own process (`python bench/<name>.py [--quick]`), which writes
bench/results/<name>.md and .json; this script then assembles the document: machine, versions, date,
a summary of the goals, and every section with its own command and date. A section that fails or has
never been run is listed as "not yet measured" with the reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, RESULTS, ROOT, machine_info, markdown_table

DOC = ROOT / "docs" / "benchmarks.md"
# (name, script and its arguments, title); the order of the document
SECTIONS = [
    ("loss_memory", "bench/loss_memory.py", "Loss memory and time"),
    # the fused loss at Qwen-size V and L = 2,048: the full-vocabulary objective needs ~15 GB there, so
    # this section wants the machine's memory to itself (H = 256 keeps the LM-head matmuls affordable)
    (
        "loss_memory_fused",
        "bench/loss_memory.py --fused --vocabs 151936 --lengths 2048 --hidden 256 --rounds 1 --reps 2 --threads 2",
        "Fused loss memory and time",
    ),
    ("fsdp_memory", "bench/fsdp_memory.py --steps 2", "Sharded students"),
    ("wire", "bench/wire.py", "Wire size and fidelity"),
    ("wire_encode_speed", "bench/wire_encode_speed.py", "Wire encoder speed"),
    ("service_overhead", "bench/service_overhead.py", "Service overhead"),
    ("grpc_experiments", "bench/grpc_experiments.py", "gRPC I/O paths"),
    ("many_students", "bench/many_students.py", "Many students"),
    ("trainer_stall", "bench/trainer_stall.py", "Trainer stall"),
    ("vllm_engine", "bench/vllm_engine.py", "vLLM engine"),
    ("vllm_conversion", "bench/vllm_conversion.py", "vLLM engine: CPU per position"),
    ("vllm_service", "bench/vllm_service.py", "vLLM engine: the service's goals"),
]
GPU_NOTE = """## GPU (`bench/gpu.sh`)

`bench/gpu.sh` runs the service-overhead and loss benchmarks on one NVIDIA GPU: a random-init
Llama-style model of 1.10B parameters (`bench/models.py`, `llama-1b`: 20 layers, hidden 2048, vocabulary
49152, the tiny fixture's tokenizer) in bfloat16 behind `dualdistill serve --device cuda`, and the loss
variants with bfloat16 logits on the GPU (peak memory from `torch.cuda.max_memory_allocated`). It needs
no network and writes its results under `$OUT` (default bench/results/gpu). Where vLLM is installed it
also runs `bench/vllm_tp.py`: the vllm engine tensor parallel over every visible GPU against an in-process
vLLM call with the same engine arguments. {status}
"""


def run_section(name: str, script: str, quick: bool, timeout: float) -> str | None:
    """Run one section's script; None on success, else the reason it failed (last lines of stderr)."""
    command = [PYTHON, *script.split()] + (["--quick"] if quick else [])
    print(f"[run_all] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"  # the section's progress and errors (`tail -f` it while it runs)
    with log.open("w") as err:
        try:
            proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s"
    print(f"[run_all] {name}: exit {proc.returncode} in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    if proc.returncode != 0:
        return "failed: " + " / ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    return None


def section_text(name: str, title: str, failure: str | None) -> tuple[str, list[dict]]:
    md, js = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
    if failure is None and md.is_file():
        data = json.loads(js.read_text()) if js.is_file() else {}
        return _with_machine(md.read_text(), data.get("machine")), data.get("goals", [])
    reason = failure or "never run on this machine"
    return f"## {title}\n\nNot yet measured: {reason}.\n", []


def _with_machine(text: str, machine: dict | None) -> str:
    """The section's text with the CPU it ran on after its "Command:" line: sections are measured at
    different times, and the shared machines behind them are not always the same model."""
    if not machine:
        return text
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("Command:")), None)
    if at is None:
        return text
    lines.insert(at + 1, f"Measured on: {machine['cpu']}, {machine['cores']} cores.")
    return "\n".join(lines)


def gpu_status() -> str:
    gpu = RESULTS / "gpu"
    found = sorted(p.name for p in gpu.glob("*.md")) if gpu.is_dir() else []
    if not found:
        return (
            "**Not yet measured**: the machine these numbers come from has no GPU. The script's CPU path "
            "was checked with `bench/gpu.sh --dry-run` (a 26M-parameter random Llama in float32, quick loss "
            "sizes), which exercises every step except CUDA itself."
        )
    return "Results: " + ", ".join(f"bench/results/gpu/{n}" for n in found) + "."


def render(texts: list[str], goals: list[dict], info: dict, argv: list[str]) -> str:
    command = " ".join([".venv/bin/python", "bench/run_all.py", *argv])
    out = [
        "# Benchmarks",
        "",
        "Every number below was measured by the scripts in `bench/`. This file was last assembled by "
        f"`{command}` (`make bench` runs every section at full size, `make bench-quick` at reduced sizes); "
        "each section names the command that produced it and when it ran. Figures are medians over repeats with their spread in brackets "
        "(interquartile range for >= 4 repeats, else min-max); ratios compare variants measured in the same "
        "run, because the machine is shared and its absolute timings drift. Sections ran on shared machines "
        "that are not always the same CPU model: each names its own (absolute times compare only within one "
        "section).",
        "",
        f"Assembled on: {info['cpu']}, {info['cores']} cores, {info['os']}; Python {info['python']}, torch "
        f"{info['torch']}, transformers {info['transformers']}, grpcio {info['grpc']}, numpy {info['numpy']}. "
        f"Document generated {info['date']}.",
        "",
        "## Goals",
        "",
    ]
    rows = [[g["item"], g["goal"], g["measured"], {True: "met", False: "**not met**"}.get(g["met"], "n/a")] for g in goals]
    out.append(markdown_table(["item", "goal", "measured", "verdict"], rows) if rows else "No section measured yet.")
    out.append("")
    out += [t.rstrip() + "\n" for t in texts]
    out.append(GPU_NOTE.format(status=gpu_status()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes (make bench-quick)")
    p.add_argument("--only", default=None, help="comma list of sections to rerun; the others keep their results")
    p.add_argument("--assemble", action="store_true", help="rerun nothing; rebuild the document from stored results")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per section before it is abandoned")
    args = p.parse_args(argv)
    names = [n for n, _, _ in SECTIONS]
    only = set(args.only.split(",")) if args.only else set(names)
    if args.assemble:
        only = set()
    unknown = only - set(names) if not args.assemble else set()
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {names}")
    texts, goals = [], []
    for name, script, title in SECTIONS:
        failure = run_section(name, script, args.quick, args.timeout) if name in only else None
        text, section_goals = section_text(name, title, failure)
        texts.append(text)
        goals += section_goals
    DOC.write_text(render(texts, goals, machine_info(), argv))
    print(f"[run_all] wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
