"""Peak resident memory per rank of one training step, DDP vs FSDP2, 2 CPU ranks (gloo) under torchrun.

    python bench/fsdp_memory.py [--hidden 768] [--layers 12] [--vocab 32000] [--seq 256] [--steps 3]

Method. For each mode (ddp, fsdp) the parent starts `torchrun --nproc_per_node 2` on this script
(`--child`). Each rank records its resident set after imports (the baseline), builds the same random
Llama-style student (`LlamaConfig`, float32, seeded), hands it to the trainer's own `parallel.prepare` /
`parallel.wrap` (DDP, or fully_shard per decoder layer + root) and `build_optimizer` (AdamW), and runs
`--steps` optimizer steps of the fused DPD loss on one synthetic pair (sparse teacher rows, k = 20).
Peak = VmHWM - baseline per rank: weights, gradients, AdamW state, communication buffers and the step's
activations. glibc mmaps every allocation >= 64 KiB (MALLOC_MMAP_THRESHOLD_), so freed memory leaves the
resident set at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    ROOT,
    Section,
    add_output_args,
    command_line,
    header,
    machine_info,
    markdown_table,
    plain_args,
    saved_run,
)

MODES = ("ddp", "fsdp")
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------- child
def child(args: argparse.Namespace) -> None:
    """One rank: baseline, model, parallel wrapper, AdamW, steps; rank 0 prints every rank's record."""
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.common import peak_rss_bytes, rss_bytes
    from dualdistill.losses import DPDBatch, DPDLossConfig, shift_labels
    from dualdistill.teacher_logits import TeacherLogits
    from dualdistill.trainer import distributed as dd
    from dualdistill.trainer import parallel
    from dualdistill.trainer.config import TrainConfig
    from dualdistill.trainer.optim import build_optimizer

    info = dd.env_info()
    dd.init(info, torch.device("cpu"))
    base = rss_bytes()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64), tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    train = TrainConfig(parallel=args.mode, fused_loss=True, learning_rate=1e-4)
    forward = parallel.prepare(model, train, info, None)
    optimizer = build_optimizer(forward, train)
    wrapped = parallel.wrap(forward, info, torch.device("cpu"))
    length, k = args.seq, 20
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (2, length), generator=g)
    response = torch.zeros(2, length, dtype=torch.bool)
    response[:, length // 4 :] = True
    labels, loss_mask = shift_labels(ids, response)
    lp = torch.randn(2, length, k, generator=g).log_softmax(-1) - 0.1
    teacher = TeacherLogits(
        torch.randint(0, args.vocab, (2, length, k), generator=g), lp, lp[..., 0].clone(),
        torch.full((2, length), -2.4), loss_mask.clone(),
    )  # fmt: skip
    batch = DPDBatch(labels, loss_mask, teacher, torch.tensor([-50.0, -60.0]))
    loss_config = DPDLossConfig()
    after_setup, losses = rss_bytes() - base, []
    for _ in range(args.steps):
        out = wrapped(ids, torch.ones_like(ids), batch, loss_config)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
    record = {"rank": info.rank, "params": params, "peak_bytes": peak_rss_bytes() - base,
              "setup_bytes": after_setup, "losses": losses}  # fmt: skip
    records = dd.all_gather_objects(record, info)
    if info.is_main:
        print(json.dumps({"mode": args.mode, "ranks": records}))
    dist.barrier()
    dd.shutdown(True)


# ------------------------------------------------------------------------------------------------ parent
def measure(args: argparse.Namespace) -> list[dict]:
    runs = []
    for mode in MODES:
        print(f"[fsdp_memory] {mode}: 2 ranks", file=sys.stderr)
        command = [
            PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "bench/fsdp_memory.py",
            "--child", "--mode", mode, "--hidden", str(args.hidden), "--layers", str(args.layers),
            "--vocab", str(args.vocab), "--seq", str(args.seq), "--steps", str(args.steps),
        ]  # fmt: skip
        env = {**os.environ, **CHILD_ENV}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "client"), env.get("PYTHONPATH", "")])
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{mode} run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        runs.append(json.loads(lines[-1]))
    return runs


def render(runs: list[dict], args: argparse.Namespace, info: dict, argv: list[str]) -> str:
    gib = 2**-30
    params = runs[0]["ranks"][0]["params"]
    lines = [header("Sharded students: DDP vs FSDP2 memory per rank", command_line("bench/fsdp_memory.py", argv), info)]
    lines.append(
        f"A random Llama-style student of {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} "
        f"layers, vocabulary {args.vocab}, untied head), float32, AdamW, the fused DPD loss on one pair of "
        f"{args.seq} tokens, {args.steps} optimizer steps, 2 CPU ranks (gloo, torchrun) sharing a machine with "
        "other work. Peak growth = VmHWM - the resident set after imports, per rank (the model is built "
        "after the baseline). 16 bytes per parameter (fp32 weights, gradients, two AdamW moments) = "
        f"{16 * params * gib:.2f} GiB.\n"
    )
    rows, peaks = [], {}
    for run in runs:
        for r in run["ranks"]:
            rows.append([run["mode"], r["rank"], f"{r['setup_bytes'] * gib:.2f}", f"{r['peak_bytes'] * gib:.2f}",
                         f"{r['peak_bytes'] / params:.1f}", f"{r['losses'][-1]:.4f}"])  # fmt: skip
        peaks[run["mode"]] = max(r["peak_bytes"] for r in run["ranks"])
    lines.append(
        markdown_table(
            ["mode", "rank", "after setup (GiB)", "peak growth (GiB)", "bytes / parameter", "last loss"], rows
        )
    )
    lines.append(
        f"\nFSDP / DDP peak per rank (the larger rank of each): {peaks['fsdp'] / peaks['ddp']:.2f}x. The last "
        "losses of the two modes agree: the same model trains either way.\n"
    )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=768, help="hidden size of the random student")
    p.add_argument("--layers", type=int, default=12, help="decoder layers")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--seq", type=int, default=256, help="tokens per side of the pair")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps (AdamW state exists from step 1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, default="ddp", help=argparse.SUPPRESS)
    add_output_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child:
        child(args)
        return
    if args.render_from:
        data, saved, saved_argv = saved_run(args.render_from, parse)
        runs, info, argv, args = data["runs"], data["machine"], saved_argv, saved
    else:
        runs, info = measure(args), machine_info()
    md = render(runs, args, info, argv)
    Section("fsdp_memory", "Sharded students", md, {"machine": info, "runs": runs, "argv": argv,
                                                    "args": plain_args(args)}).save(args.results_dir)  # fmt: skip
    print(md)


if __name__ == "__main__":
    main()
