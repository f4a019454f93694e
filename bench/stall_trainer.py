"""The real trainer's stall: `dualdistill.trainer.train` against the served teacher (trainer_stall.py part 2).

The trainer always fetches through the Prefetcher (`prefetch_depth` >= 1), so this measures the "with"
side as users run it, at depths 1 and 2. Steady-state stall share = (teacher_wait_s at the last step -
teacher_wait_s at the first step) / wall time between the two steps' `on_step` calls, i.e. steps 2..N
without the start-up fetch (whose wait, `first_step_wait`, is reported on its own).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def write_pairs(path: Path, n: int, vocab: int, prompt_len: int, seq_len: int, seed: int) -> Path:
    """n random pairs in the `dualdistill pairs` JSONL shape, reference scores in columns."""
    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = rng.integers(0, vocab, prompt_len).tolist()
            chosen = rng.integers(0, vocab, seq_len - prompt_len).tolist()
            rejected = rng.integers(0, vocab, seq_len - prompt_len).tolist()
            f.write(json.dumps({
                "id": f"p{i}", "prompt_token_ids": prompt, "chosen_token_ids": chosen,
                "rejected_token_ids": rejected, "ref_chosen_logps": float(-rng.uniform(100, 400)),
                "ref_rejected_logps": float(-rng.uniform(100, 400)),
            }) + "\n")  # fmt: skip
    return path


def run_trainer(args, workdir: Path, student: Path, teacher_url: str, vocab: int, depth: int, seed: int) -> dict:
    """One `train(config)` run of args.steps steps at Prefetcher depth `depth`; returns its stall shares."""
    from dualdistill.trainer import train
    from dualdistill.trainer.config import TrainConfig

    tag = f"d{depth}-s{seed}"
    pairs = write_pairs(workdir / f"pairs-{tag}.jsonl", args.steps * args.pairs, vocab, args.prompt_len,
                        args.seq_len, seed=seed)  # fmt: skip
    config = TrainConfig(
        student=str(student), pairs=str(pairs), output_dir=str(workdir / f"run-{tag}"), teacher_url=teacher_url,
        teacher_model="teacher", reference="column", top_k=args.top_k, batch_size=args.pairs, max_steps=args.steps,
        learning_rate=1e-4, prefetch_depth=depth, progress=False, plots=False, device="cpu", verifier="none",
        max_seq_len=args.seq_len,
    )  # fmt: skip
    marks: list[tuple[float, float]] = []  # (time, cumulative teacher wait) after each step

    def on_step(step: int, record: dict) -> None:
        marks.append((time.perf_counter(), float(record["teacher_wait_s"])))

    train(config.validate(), on_step=on_step)
    if len(marks) < 2:
        raise RuntimeError(f"the trainer ran {len(marks)} step(s); steady state needs >= 2")
    (t1, w1), (tn, wn) = marks[0], marks[-1]
    return {
        "depth": depth, "steps": len(marks), "steady_share": (wn - w1) / (tn - t1),
        "first_step_wait": w1, "wait_seconds": wn, "seconds_per_step": (tn - t1) / (len(marks) - 1),
    }
