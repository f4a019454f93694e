"""The before/after table: text for the terminal, JSON for scripts, a bar chart PNG."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

# (key in the metrics dict, column header, format)
COLUMNS = (
    ("verifier_acc", "verifier acc", "{:.3f}"),
    ("kl_pos", "KL(teacher||model) pos", "{:.3f}"),
    ("pref_acc", "pref acc", "{:.3f}"),
)
LABELS = {
    "student-init": "student before SFT (pruned)",
    "student-sft": "student after SFT",
    "student-dpd": "student after DPD",
    "teacher": "teacher (SmolLM2-135M-Instruct)",
}


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def format_table(rows: Mapping[str, Mapping[str, float | None]], teacher_label: str | None = None) -> str:
    """A fixed-width table, one line per model (in `rows` order); the teacher's KL is marked as 0 by definition."""
    labels = {**LABELS, **({"teacher": teacher_label} if teacher_label else {})}
    names = [labels.get(name, name) for name in rows]
    width = max(len("model"), *(len(n) for n in names))
    widths = [max(len(header), 10) for _, header, _ in COLUMNS]
    lines = ["  ".join(["model".ljust(width), *(h.rjust(w) for (_, h, _), w in zip(COLUMNS, widths, strict=True))])]
    lines.append("-" * len(lines[0]))
    for (name, metrics), label in zip(rows.items(), names, strict=True):
        cells = []
        for (key, _, fmt), w in zip(COLUMNS, widths, strict=True):
            text = _cell(metrics.get(key), fmt)
            if name == "teacher" and key == "kl_pos":
                text = "0 (def.)"
            cells.append(text.rjust(w))
        lines.append("  ".join([label.ljust(width), *cells]))
    return "\n".join(lines)


def write_results(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot_results(path: Path, rows: Mapping[str, Mapping[str, float | None]]) -> Path:
    """One panel per metric, one bar per model; a missing value is drawn as no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.6))
    for ax, (key, header, _) in zip(axes, COLUMNS, strict=True):
        values = [rows[n].get(key) for n in names]
        ax.bar(range(len(names)), [0.0 if v is None else v for v in values], color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(header, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
