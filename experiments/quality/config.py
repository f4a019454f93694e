"""The study's design in one validated object: task, data sizes, student, budget, sweep, methods.

`--size cpu` (the default) is the design the issue asks for at the smallest admissible scale: >= 256
training pairs, >= 128 held-out test queries, 3 seeds, 8 methods, a 2-point learning-rate sweep picked on a
separate validation split. `--size gpu` is the same study at 10x the data and budget, for a CUDA machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# method -> (loss preset, DPDLossConfig overrides); None = no training (the SFT checkpoint itself)
METHODS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "sft": None,
    "kd-pos": ("kd-pos", {}),
    "kd-neg": ("dpd", {"dpo_weight": 0.0, "pos_weight": 0.0}),
    "kd-pos+kd-neg": ("dpd", {"dpo_weight": 0.0}),
    "dpo": ("dpo", {}),
    "dpo+kd-pos": ("dpd", {"neg_weight": 0.0}),
    "dpd": ("dpd", {}),
    "distillm2": ("distillm2", {}),
}


@dataclass(frozen=True)
class StudyConfig:
    size: str = "cpu"
    task: str = "double"  # a dualdistill.tasks.registry name (chosen by experiments/task_search.py)
    keep_every: int = 10  # student = teacher layers 0, k, 2k, ... (SmolLM2's 30 -> 3 for k = 10)
    max_new_tokens: int = 16  # longest response everywhere
    # --- SFT (student-init -> student-sft: the init of every run, the DPO reference, the negatives' source)
    sft_queries: int = 128
    sft_temperature: float = 0.7
    sft_steps: int = 48
    sft_batch_size: int = 8
    sft_lr: float = 3e-4
    # --- pairs: best-of-n teacher samples vs the SFT student's, 0/1 verifier, margin 1 (right vs wrong)
    train_queries: int = 576  # for >= 256 kept pairs at the measured keep rate (12 of the first 25 queries)
    min_train_pairs: int = 256
    val_queries: int = 96  # learning-rate pick (greedy verifier accuracy)
    test_queries: int = 128  # every reported metric
    pair_samples: int = 2  # best of 2 teacher samples vs worst of 2 student samples
    pair_temperature: float = 0.3  # the teacher's samples are good only near greedy (0.7: 3 of 9 queries had a right one)
    pair_margin: float = 1.0  # keep iff score(chosen) - score(rejected) >= this: 1 = right vs wrong
    top_k: int = 20  # teacher entries per position (captured once, lossless)
    # --- every trained run
    steps: int = 32
    batch_size: int = 8
    warmup_steps: int = 2
    # 2 points: at the load of a shared 2-core machine a run costs 5-6 min (10 s/step), so 3e-5 (which
    # moves a 3-layer student little in 32 steps) was dropped to fit the study in hours; --size gpu too
    learning_rates: tuple[float, ...] = (1e-4, 3e-4)
    seeds: tuple[int, ...] = (0, 1, 2)
    pass_k: int = 4  # samples per test query for pass@k (temperature 1)
    device: str = "cpu"
    # the teacher service's engine for the pairs, the capture and the live scoring: vLLM batches the
    # concurrent generation requests (measured 6x the hf engine's tokens/s on these CPUs, docs/benchmarks.md)
    engine: str = "vllm"
    threads: int = 1  # torch intra-op threads: 1 is fastest on a shared machine
    methods: tuple[str, ...] = tuple(METHODS)
    data_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if self.min_train_pairs < 1 or self.test_queries < 1 or self.val_queries < 1:
            raise ValueError("min_train_pairs, val_queries and test_queries must be >= 1")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be hf or vllm, got {self.engine!r}")
        if not self.learning_rates or not self.seeds:
            raise ValueError("learning_rates and seeds must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SIZES: dict[str, StudyConfig] = {
    "cpu": StudyConfig(),
    # 10x the data and the budget, the student at 10 layers: a CUDA machine
    "gpu": StudyConfig(
        size="gpu", keep_every=3, sft_queries=1280, sft_steps=480, train_queries=5760, min_train_pairs=2560,
        val_queries=960, test_queries=1280, steps=320, device="cuda", threads=4,
    ),  # fmt: skip
    # tests: tiny models, a handful of queries, one learning rate
    "tiny": StudyConfig(
        size="tiny", keep_every=1, max_new_tokens=6, sft_queries=4, sft_steps=2, sft_batch_size=2, train_queries=6,
        min_train_pairs=1, val_queries=3, test_queries=4, pair_samples=2, top_k=8, steps=2, batch_size=2,
        warmup_steps=0, learning_rates=(1e-3,), seeds=(0, 1), pass_k=2, pair_margin=-math.inf, engine="hf",
    ),  # fmt: skip
}


def study_config(size: str, **overrides: Any) -> StudyConfig:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    return replace(SIZES[size], **overrides)
