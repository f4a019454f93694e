"""Run logs: metrics JSONL (the record tests and plots read), optional TensorBoard, a tqdm bar.

metrics.jsonl holds one JSON object per line:
    {"kind": "train", "step", "epoch", "lr", "loss", "dpo", "pos", "neg", ..., "example_ids": [[rank 0 ids],
     [rank 1 ids], ...], "teacher_wait_s", ...}          one per optimizer step
    {"kind": "eval", "step", "eval/kl_pos", "eval/pref_acc", "eval/reward_margin", ...}
    {"kind": "run", ...}                                  start / resume / end markers
`example_ids` lists, per rank, the pair ids that step trained on (fillers excluded): over an epoch they
cover the training pairs exactly once. On resume, lines of steps after the checkpoint (written by the run
that was killed before its next checkpoint) are dropped, so the file stays one record per step.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line cut short by a killed process; the resumed run rewrites that step
    return [json.loads(line) for line in lines if line.strip()]


class MetricsLog:
    """Append-only metrics of rank 0 (other ranks get a disabled log)."""

    def __init__(self, output_dir: str | Path, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("kind") == "run" or r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed; metrics go to metrics.jsonl only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(record)) + "\n")
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(key if "/" in key else f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar over optimizer steps showing the loss components (rank 0, when enabled)."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, values: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
