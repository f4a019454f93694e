"""What a run produced, over everything in its files (earlier runs included): counts and distributions.

    summary = {
      "kept": int, "dropped": int, "dropped_by_reason": {reason: int}, "total": kept + dropped,
      "keep_rate": kept / total,
      "scores": {                                  # each a `distribution` (count, mean, quantiles)
        "chosen", "rejected", "margin",            #   the kept pairs
        "pair_margin_all",                         #   s+_i - s-_j of every formed pair, kept or dropped
        "positive_samples", "negative_samples",    #   every valid sample's score
      },
      "settings": {...}, "run": {...},             # what the caller passes in (scorer, margin, timings)
    }
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def distribution(values: Iterable[float | None]) -> dict:
    """count, mean, std and the QUANTILES (linear interpolation) of the finite values; None-valued when empty."""
    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    names = [f"p{round(q * 100):02d}" for q in QUANTILES]
    if data.size == 0:
        return {"count": 0, "mean": None, "std": None, **dict.fromkeys(names)}
    quantiles = np.quantile(data, QUANTILES)
    return {
        "count": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std()),
        **{name: float(q) for name, q in zip(names, quantiles, strict=True)},
    }


def _sample_scores(records: list[dict], key: str) -> list[float]:
    return [s for r in records for s in r.get(key) or [] if s is not None]


def summarize(kept: list[dict], dropped: list[dict], settings: dict | None = None, run: dict | None = None) -> dict:
    """The summary dict of the module docstring from the records of both output files."""
    total = len(kept) + len(dropped)
    everything = kept + dropped
    return {
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(Counter(r.get("reason", "unknown") for r in dropped).items())),
        "total": total,
        "keep_rate": (len(kept) / total) if total else None,
        "scores": {
            "chosen": distribution(r["chosen_score"] for r in kept),
            "rejected": distribution(r["rejected_score"] for r in kept),
            "margin": distribution(r["margin"] for r in kept),
            "pair_margin_all": distribution(r.get("margin") for r in everything),
            "positive_samples": distribution(_sample_scores(everything, "positive_scores")),
            "negative_samples": distribution(_sample_scores(everything, "negative_scores")),
        },
        "settings": settings or {},
        "run": run or {},
    }


def write_summary(path: str | Path, summary: dict) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot_margins(path: str | Path, kept: list[dict], dropped: list[dict], threshold: float) -> None:
    """PNG histogram of s+_i - s-_j for kept and dropped pairs (stacked), with the margin threshold."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    kept_margins = [r["margin"] for r in kept if r.get("margin") is not None]
    dropped_margins = [r["margin"] for r in dropped if r.get("margin") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if kept_margins or dropped_margins:
        ax.hist([kept_margins, dropped_margins], bins=40, stacked=True, label=["kept", "dropped"],
                color=["tab:green", "tab:gray"])
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no pairs formed", ha="center", va="center", transform=ax.transAxes)
    if math.isfinite(threshold):
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("score(chosen) - score(rejected)")
    ax.set_ylabel("queries")
    ax.set_title(f"pair margins: {len(kept_margins)} kept, {len(dropped)} dropped")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    """A few human-readable lines for the terminal."""
    lines = [f"kept {summary['kept']} / {summary['total']} queries"
             + (f" ({summary['keep_rate']:.1%})" if summary["keep_rate"] is not None else "")]
    for reason, count in summary["dropped_by_reason"].items():
        lines.append(f"  dropped {count}: {reason}")
    for key in ("chosen", "rejected", "margin"):
        dist = summary["scores"][key]
        if dist["count"]:
            lines.append(
                f"  {key:>8}: mean {dist['mean']:.4g}  p05 {dist['p05']:.4g}  p50 {dist['p50']:.4g}  "
                f"p95 {dist['p95']:.4g}"
            )
    return "\n".join(lines)
