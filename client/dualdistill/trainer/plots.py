"""PNG curves of a run from its metrics.jsonl: the three loss terms per step, and the eval metrics."""

from __future__ import annotations

from pathlib import Path

from dualdistill.trainer.logs import read_metrics

LOSS_TERMS = (("dpo", "L_DPO"), ("pos", "L_pos"), ("neg", "L_neg"), ("loss", "L total"))
EVAL_TERMS = (
    ("eval/kl_pos", "forward KL to teacher (positives)"),
    ("eval/pref_acc", "preference accuracy"),
    ("eval/reward_margin", "DPO reward margin"),
    ("eval/verifier_acc", "verifier accuracy"),
)


def write_plots(output_dir: str | Path) -> list[Path]:
    """Write plots/losses.png (and plots/eval.png when there were evaluations); returns the files."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in worker processes and CI
    import matplotlib.pyplot as plt

    records = read_metrics(output_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    folder = Path(output_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if train:
        fig, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(4 * len(LOSS_TERMS), 3.2), squeeze=False)
        steps = [r["step"] for r in train]
        for ax, (key, title) in zip(axes[0], LOSS_TERMS, strict=True):
            ax.plot(steps, [r.get(key) for r in train], lw=1.2)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(folder / "losses.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    present = [(k, t) for k, t in EVAL_TERMS if any(r.get(k) is not None for r in evals)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
        for ax, (key, title) in zip(axes[0], present, strict=True):
            points = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", lw=1.2)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(folder / "eval.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
