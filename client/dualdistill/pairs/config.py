"""`PairsConfig`: every setting of a pairs run, with its bounds; the CLI's help comes from the metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from dualdistill.bounds import check_int, check_range
from dualdistill.pairs.select import PICKS


@dataclass
class PairsConfig:
    teacher_model: str = field(metadata={"help": "served name of the teacher (positives; teacher-logprob scorer)"})
    student_model: str | None = field(
        default=None, metadata={"help": "served name of the student SFT model (negatives)"}
    )
    student_dir: str | None = field(
        default=None, metadata={"help": "local HF directory of the student SFT model, run in this process"}
    )
    samples: int = field(default=4, metadata={"help": "samples per query from each side, 1..256"})
    scorer: str = field(
        default="teacher-logprob",
        metadata={"help": "teacher-logprob | verifier:MODULE:FUNCTION | reward-model:PATH"},
    )
    margin: float = field(default=0.0, metadata={"help": "keep iff score(chosen) - score(rejected) >= margin"})
    min_score: float = field(default=-math.inf, metadata={"help": "keep only if score(chosen) >= min_score"})
    pick: str = field(default="best-worst", metadata={"help": "pair choice: " + " | ".join(PICKS)})
    concurrency: int = field(default=4, metadata={"help": "queries in flight at once, 1..1024"})
    seed: int = field(default=0, metadata={"help": "base seed; each query's seeds derive from it and its id"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest response, in tokens, >= 1"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature, >= 0 (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass, in (0, 1]"})
    chat: bool = field(
        default=False,
        metadata={"help": "send a plain 'prompt' as one user chat message (the server applies the chat "
                  "template); queries with 'messages' are always sent as chats"},
    )
    device: str = field(default="cpu", metadata={"help": "torch device for --student-dir and reward-model"})

    def __post_init__(self) -> None:
        if not self.teacher_model:
            raise ValueError("teacher_model is required")
        if (self.student_model is None) == (self.student_dir is None):
            raise ValueError("give exactly one of student_model (served) and student_dir (local)")
        check_int("samples", self.samples, 1, 256)
        check_int("concurrency", self.concurrency, 1, 1024)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if math.isnan(self.margin) or math.isnan(self.min_score):
            raise ValueError("margin and min_score must be numbers (not NaN)")
        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {self.pick!r}")
        check_int("seed", self.seed, 0, 2**63 - 1)

    def settings(self) -> dict:
        """The settings as a JSON-ready dict (for the summary)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata["help"] for f in fields(PairsConfig) if f.name == name)
