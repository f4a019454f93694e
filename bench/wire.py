"""Wire size and fidelity: bytes/position, KL and codec time per k and codec, via bench/wire_size.py.

    python bench/wire.py [--quick] [--rounds N]

`bench/wire_size.measure` (the codec's own benchmark: real SmolLM2-135M logits over English text) is
called `rounds` times with one timing repeat each, so the encode/decode times get a median and a spread
over rounds; sizes and KL are deterministic and identical across rounds (checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Section,
    add_output_args,
    command_line,
    fmt,
    header,
    machine_info,
    markdown_table,
    summarize,
)

GOAL_BYTES, GOAL_KL, GOAL_K = 200.0, 1e-4, 128
DISTILLKIT_BYTES = 300.0  # DistillKit's published size at k = 128 (a reference, not measured here)
METHODS = ("lossy", "lossless", "trl-base64", "openai-json")


def measure(rounds: int, quick: bool) -> list[dict]:
    """Rows per (k, method) with per-round encode/decode times; sizes/KL checked identical across rounds."""
    from bench.wire_size import measure as wire_measure

    merged: dict[tuple[int, str], dict] = {}
    for r in range(rounds):
        print(f"[wire] round {r + 1}/{rounds}", file=sys.stderr)
        for row in wire_measure(quick=quick, repeats=1):
            key = (row["k"], row["method"])
            if key not in merged:
                merged[key] = {**row, "encode_us": [], "decode_us": []}
            elif merged[key]["bytes_per_position"] != row["bytes_per_position"]:
                raise RuntimeError(f"{key}: payload size changed between rounds")
            merged[key]["encode_us"].append(row["encode_us"])
            merged[key]["decode_us"].append(row["decode_us"])
    return list(merged.values())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in METHODS:
        mine = sorted((r["k"], r["bytes_per_position"]) for r in rows if r["method"] == method)
        if mine:
            ax.plot([m[0] for m in mine], [m[1] for m in mine], marker="o", label=method)
    ax.scatter([GOAL_K], [DISTILLKIT_BYTES], marker="*", s=150, color="black", zorder=5,
               label=f"DistillKit, published (~{DISTILLKIT_BYTES:.0f} B at k={GOAL_K})")  # fmt: skip
    ax.hlines(GOAL_BYTES, GOAL_K * 0.8, GOAL_K * 1.25, color="grey", linestyle="--", linewidth=2,
              label=f"goal: <= {GOAL_BYTES:.0f} B at k={GOAL_K}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("k (entries per position)")
    ax.set_ylabel("bytes per position")
    ax.set_title("Teacher logits on the wire (SmolLM2-135M, English text)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goal_row(rows: list[dict]) -> dict | None:
    lossy = [r for r in rows if r["method"] == "lossy" and r["k"] == GOAL_K]
    if not lossy:
        return None
    r = lossy[0]
    met = r["bytes_per_position"] <= GOAL_BYTES and r["mean_kl"] <= GOAL_KL
    return {
        "item": "wire size",
        "goal": f"lossy <= {GOAL_BYTES:.0f} B/position at k={GOAL_K} with KL <= {GOAL_KL:g}",
        "measured": f"{r['bytes_per_position']:.1f} B/position, mean KL {r['mean_kl']:.2e} (max {r['max_kl']:.1e})",
        "met": met,
    }


def render(rows: list[dict], args: argparse.Namespace, info: dict, argv: list[str]) -> str:
    first = rows[0]
    lines = [header("Wire size and fidelity", command_line("bench/wire.py", argv), info)]
    lines.append(
        f"Real teacher rows: SmolLM2-135M-Instruct over English text (`bench/wire_size.py`), {first['sequences']} "
        f"sequences, {first['positions']} positions in one payload per (k, codec). KL = KL(exact || decoded) "
        "over the k + 1 buckets (mean and max over positions). Sizes and KL are deterministic; codec times are "
        f"median [spread] over {args.rounds} rounds, microseconds per position, one process. DistillKit's "
        f"~{DISTILLKIT_BYTES:.0f} B/position at k = {GOAL_K} is its published figure, shown as a reference; it "
        "was not measured here.\n"
    )
    table = []
    for r in sorted(rows, key=lambda r: (r["k"], METHODS.index(r["method"]) if r["method"] in METHODS else 99)):
        enc, dec = summarize(r["encode_us"]), summarize(r["decode_us"])
        both = summarize(a + b for a, b in zip(r["encode_us"], r["decode_us"], strict=True))
        table.append(
            [r["k"], r["method"], f"{r['bytes_per_position']:.1f}", f"{r['mean_kl']:.2e}", f"{r['max_kl']:.1e}",
             fmt(enc, 3), fmt(dec, 3), fmt(both, 3)]
        )
    lines.append(
        markdown_table(
            ["k", "codec", "bytes/position", "mean KL (nats)", "max KL", "encode µs/pos", "decode µs/pos",
             "encode + decode µs/pos"], table,
        )
    )
    goal = goal_row(rows)
    if goal:
        lines.append(f"\nGoal ({goal['goal']}): {'met' if goal['met'] else 'not met'} — {goal['measured']}.")
        lines.append(reading(rows))
    lines.append("![bytes per position vs k](img/bench_wire_size.png)\n")
    return "\n".join(lines)


def reading(rows: list[dict]) -> str:
    """Size ratios at the goal's k and how the KL goal is read."""
    at = {r["method"]: r for r in rows if r["k"] == GOAL_K}
    if "lossy" not in at:
        return ""
    lossy = at["lossy"]["bytes_per_position"]
    parts = [f"{name} {at[name]['bytes_per_position'] / lossy:.1f}x" for name in METHODS[1:] if name in at]
    return (
        f"\nReading. At k = {GOAL_K} the other codecs are larger than `lossy` by: {', '.join(parts)}. The KL goal "
        "is read on the mean over positions; the worst single position is in the max-KL column. The lossless "
        "codec and both JSON baselines carry float32 values exactly (KL 0).\n"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 sequences (256 positions), 3 rounds")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, quick 3)")
    add_output_args(p)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    return args


def run(argv: list[str]) -> Section:
    args = parse(argv)
    info = machine_info()
    rows = measure(args.rounds, args.quick)
    plot(rows, args.img_dir / "bench_wire_size.png")
    goal = goal_row(rows)
    data = {"machine": info, "rows": rows, "goals": [goal] if goal else []}
    return Section("wire", "Wire size and fidelity", render(rows, args, info, argv), data)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    section = run(argv)
    section.save(parse(argv).results_dir)
    print(section.markdown)


if __name__ == "__main__":
    main()
