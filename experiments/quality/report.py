"""From the finished runs' JSON to the table (95% bootstrap intervals over test queries), the plot and the
list of runs still missing.

Per method, at the learning rate picked on the validation split: each test query's value is averaged over
the seeds that finished (numerators and denominators separately, for per-token metrics), then the queries
are resampled (`dualdistill.study.bootstrap`). A method's cell says how many seeds it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualdistill.study.bootstrap import bootstrap_ci

# name -> (numerator key, denominator key or None, record part, header)
METRICS: dict[str, tuple[str, str | None, str]] = {
    "acc": ("correct", None, "greedy verifier acc"),
    "pass@k": ("pass@k", None, "pass@k (T=1)"),
    "kl_teacher_samples": ("kl_teacher_sum", "kl_teacher_tokens", "KL(teacher‖student) / token, teacher samples"),
    "kl_student_samples": ("kl_student_sum", "kl_student_tokens", "KL(teacher‖student) / token, SFT-student samples"),
    "kl_own_samples": ("kl_own_sum", "kl_own_tokens", "KL(teacher‖student) / token, its own samples"),
    "teacher_logprob": ("teacher_logprob_sum", "teacher_logprob_tokens", "teacher log p / token of greedy answers"),
    "pref_acc": ("pref_correct", None, "held-out pref acc"),
    "reward_margin": ("reward_margin", None, "held-out reward margin"),
}


_ZERO = 1e-9


def pick_lrs(records: list[dict], learning_rates: tuple[float, ...]) -> dict[str, float | None]:
    """method -> the learning rate with the best seed-0 validation accuracy (ties: the smaller rate), once
    every rate of the sweep has finished; None until then."""
    picked: dict[str, float | None] = {}
    for method in {r["method"] for r in records}:
        sweep = {r["lr"]: float(np.mean(r["val"]["val_correct"])) for r in records
                 if r["method"] == method and r["seed"] == 0 and r["lr"] is not None}  # fmt: skip
        if any(r["method"] == method and r["lr"] is None for r in records):
            picked[method] = None  # untrained (sft)
        elif set(learning_rates) <= set(sweep):
            picked[method] = min(learning_rates, key=lambda lr: (-sweep[lr], lr))
    return picked


def _arrays(record: dict, num: str, den: str | None, pass_k: int) -> tuple[np.ndarray, np.ndarray]:
    key = f"pass@{pass_k}" if num == "pass@k" else num
    values = np.asarray(record["test"][key], dtype=np.float64)
    return values, (np.ones_like(values) if den is None else np.asarray(record["test"][den], dtype=np.float64))


def _per_query(records: list[dict], method: str, lr: float | None, num: str, den: str | None, pass_k: int):
    """The method's finished test runs at `lr`: each query's numerator and denominator averaged over seeds,
    and the per-seed arrays."""
    runs = [r for r in records if r["method"] == method and r["lr"] == lr and "test" in r]
    parts = [_arrays(r, num, den, pass_k) for r in runs if _has(r, num, den, pass_k)]
    if not parts:
        return None, None, []
    return np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0), parts


def _has(record: dict, num: str, den: str | None, pass_k: int) -> bool:
    key = f"pass@{pass_k}" if num == "pass@k" else num
    return key in record["test"] and (den is None or den in record["test"])


def summarize(records: list[dict], methods: list[str], picked: dict, pass_k: int, resamples: int = 2000) -> dict:
    """method -> {"lr", "seeds", metric -> Interval dict}."""
    table: dict[str, Any] = {}
    for method in methods:
        if method not in picked:
            continue
        runs = [r for r in records if r["method"] == method and r["lr"] == picked[method] and "test" in r]
        if not runs:
            continue
        row: dict[str, Any] = {"lr": picked[method], "seeds": sorted(r["seed"] for r in runs)}
        for name, (num, den, _) in METRICS.items():
            mean_num, mean_den, parts = _per_query(records, method, picked[method], num, den, pass_k)
            if mean_num is None or mean_num.size == 0 or mean_den.sum() <= 0:
                row[name] = None
                continue
            row[name] = bootstrap_ci(mean_num, mean_den, resamples=resamples, seed=0).to_dict()
            row[name]["seed_values"] = [float(p[0].sum() / p[1].sum()) if p[1].sum() > 0 else None for p in parts]
        table[method] = row
    return table


def differences(records: list[dict], methods: list[str], picked: dict, pass_k: int, against: str = "dpd",
                resamples: int = 2000) -> dict:  # fmt: skip
    """method -> metric -> Interval dict of (against - method), the same test queries resampled together
    (`paired_difference`), each side averaged over its finished seeds; "separates" when 0 lies outside."""
    from dualdistill.study.bootstrap import paired_difference

    out: dict[str, Any] = {}
    if against not in picked:
        return out
    for method in methods:
        if method == against or method not in picked:
            continue
        row: dict[str, Any] = {}
        for name, (num, den, _) in METRICS.items():
            a_num, a_den, _ = _per_query(records, against, picked[against], num, den, pass_k)
            b_num, b_den, _ = _per_query(records, method, picked[method], num, den, pass_k)
            if a_num is None or b_num is None or a_den.sum() <= 0 or b_den.sum() <= 0:
                continue
            d = paired_difference(a_num, b_num, a_den, b_den, resamples=resamples, seed=0).to_dict()
            # a bound that is 0 up to float rounding (e.g. 3e-18 from summed 1/128 steps) does not separate
            d["separates"] = bool(d["low"] > _ZERO or d["high"] < -_ZERO)
            row[name] = d
        if row:
            out[method] = row
    return out


def differences_markdown(diffs: dict, pass_k: int, against: str = "dpd") -> str:
    """One row per method: `against - method` per metric, bold where the interval excludes 0."""
    if not diffs:
        return f"(no paired differences yet: `{against}` or the other methods have no finished test run)\n"
    headers = [METRICS[m][2].replace("pass@k", f"pass@{pass_k}") for m in METRICS]
    lines = [f"| {against} minus | " + " | ".join(headers) + " |", "|---|" + "---|" * len(METRICS)]
    for method, row in diffs.items():
        cells = []
        for name in METRICS:
            d = row.get(name)
            if d is None:
                cells.append("n/a")
                continue
            text = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            cells.append(f"**{text}**" if d["separates"] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(table: dict, teacher: dict, pass_k: int) -> str:
    headers = [METRICS[m][2].replace("pass@k", f"pass@{pass_k}") for m in METRICS]
    lines = ["| method | lr | seeds | " + " | ".join(headers) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for method, row in table.items():
        cells = []
        for name in METRICS:
            c = row.get(name)
            cells.append("n/a" if c is None else f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]")
        lr = "—" if row["lr"] is None else f"{row['lr']:g}"
        lines.append(f"| {method} | {lr} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    t = [f"{teacher['acc']['value']:.3f} [{teacher['acc']['low']:.3f}, {teacher['acc']['high']:.3f}]"] + ["—"] * (len(METRICS) - 1)
    t[2] = "0 (def.)"
    lines.append("| teacher | — | — | " + " | ".join(t) + " |")
    return "\n".join(lines) + "\n"


def plot(path: Path, table: dict, teacher: dict, pass_k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, name in zip(axes.flat, METRICS, strict=False):
        values = [table[m].get(name) for m in methods]
        xs = [i for i, v in enumerate(values) if v is not None]
        mid = [values[i]["value"] for i in xs]
        err = [[values[i]["value"] - values[i]["low"] for i in xs], [values[i]["high"] - values[i]["value"] for i in xs]]
        ax.errorbar(xs, mid, yerr=err, fmt="o", color="tab:blue", capsize=4)
        for i in xs:  # every seed's value as a dot
            seeds = [v for v in values[i].get("seed_values", []) if v is not None]
            ax.scatter([i] * len(seeds), seeds, color="black", s=8, zorder=3)
        if name == "acc":
            ax.axhline(teacher["acc"]["value"], color="tab:red", linestyle="--", linewidth=1, label="teacher")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(METRICS[name][2].replace("pass@k", f"pass@{pass_k}"), fontsize=9)
    fig.suptitle("held-out test queries: mean over seeds, 95% bootstrap interval over queries", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
