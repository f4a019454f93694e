"""The demo's sizes (`--size`) and options. Every number of a run comes from here.

A size fixes how much work each stage does. `small` (the default) is measured to finish within about
15 minutes on 2 CPU cores (docs/demo.md has the measured wall times); `medium` and `large` scale the data
and the step budgets up; `tiny` is for tests (it expects tiny teacher/student directories to be given).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class DemoSize:
    name: str
    keep_every: int = 3  # student = teacher layers 0, k, 2k, ... (SmolLM2's 30 layers -> 10 for k = 3)
    difficulty: int = 1  # arithmetic task difficulty (1 = one addition or subtraction, numbers <= 20)
    max_new_tokens: int = 32  # longest response, in tokens, everywhere (SFT data, pairs, greedy answers)
    # --- SFT data and the SFT step (student-init -> student-sft, the DPO reference and the negatives' source)
    sft_queries: int = 24  # arithmetic queries whose teacher samples are the SFT data
    sft_samples: int = 2  # teacher samples per SFT query
    sft_temperature: float = 0.8  # sampling temperature of the SFT data
    sft_steps: int = 16  # AdamW steps of response-token cross-entropy
    sft_batch_size: int = 8
    sft_lr: float = 2e-4
    # --- pairs (teacher positives vs student-SFT negatives, filtered by the arithmetic verifier)
    train_queries: int = 20  # queries whose pairs train the student
    eval_queries: int = 12  # held-out queries: eval pairs (KL, preference accuracy) and verifier accuracy
    pair_samples: int = 4  # samples per query from each side (nearly free: decoding reads the weights once per
    # step for the whole batch, so 4 rows cost about what 2 do on a CPU)
    pair_temperature: float = 1.0
    # --- DPD training
    train_steps: int = 10
    train_batch_size: int = 4
    train_lr: float = 5e-5
    loss_preset: str = "dpd"
    top_k: int = 20  # teacher entries per position

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"size {self.name!r}: {f.name} must be >= 1, got {value}")
            if isinstance(value, float) and not value > 0:
                raise ValueError(f"size {self.name!r}: {f.name} must be > 0, got {value}")


SIZES: dict[str, DemoSize] = {
    # tests: tiny random models given with --teacher/--student; seconds, not minutes
    "tiny": DemoSize(
        "tiny", keep_every=1, max_new_tokens=8, sft_queries=4, sft_samples=1, sft_steps=2, sft_batch_size=2,
        train_queries=4, eval_queries=2, pair_samples=1, train_steps=2, train_batch_size=2, top_k=8,
    ),  # fmt: skip
    "small": DemoSize("small"),
    "medium": DemoSize(
        "medium", max_new_tokens=40, sft_queries=64, sft_steps=40, train_queries=64, eval_queries=32,
        train_steps=32,
    ),  # fmt: skip
    "large": DemoSize(
        "large", max_new_tokens=64, sft_queries=256, sft_samples=4, sft_steps=200, train_queries=512,
        eval_queries=128, pair_samples=8, train_steps=256, train_batch_size=8,
    ),  # fmt: skip
}
DEFAULT_SIZE = "small"


@dataclass(frozen=True)
class DemoOptions:
    size: DemoSize = field(default_factory=lambda: SIZES[DEFAULT_SIZE])
    workdir: Path = Path("runs/demo")  # everything the demo writes goes under it
    seed: int = 0
    fresh: bool = False  # redo every stage, ignoring what earlier runs left in the workdir
    threads: int = 1  # torch intra-op threads in this process and in the server (see docs/demo.md)
    teacher_dir: Path | None = None  # default: SmolLM2-135M-Instruct, prepared into the model cache
    student_dir: Path | None = None  # default: the teacher pruned to every `keep_every`-th layer
    progress: bool = True  # tqdm bars

    @property
    def run_dir(self) -> Path:
        """Per (size, seed): SFT data and checkpoint, pairs, the DPD run and the results."""
        return self.workdir / "runs" / f"{self.size.name}-seed{self.seed}"

    def with_size(self, name: str) -> DemoOptions:
        if name not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {name!r}")
        return replace(self, size=SIZES[name])
