"""Peak memory and time of the sparse losses (k = 128) versus full-vocabulary KD, forward + backward.

    python bench/loss_memory.py [--quick] [--rounds N] [--reps N] [--threads N] [--device cpu|cuda]

Method. Each (variant, V, L) runs in a fresh child process (`--child`), so no variant inherits another's
allocator state. The child allocates the student side (logits (B, L, V) with grad, ids, masks), then per
repeat: resets the peak (CPU: the resident-set high-water mark via /proc/self/clear_refs; CUDA:
torch.cuda.reset_peak_memory_stats), records the baseline, allocates the teacher side (the sparse
TeacherLogits, cloned, or the materialised (B, L, V) teacher logits), and times loss + backward. Peak
growth = high-water mark - baseline: teacher inputs + loss intermediates + the logits' gradient (the
gradient is the same size for every variant). glibc is told to serve every allocation >= 64 KiB with
mmap (MALLOC_MMAP_THRESHOLD_), so freed buffers leave the resident set at once and cannot hide later
growth. The first repeat is a warm-up and is not reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
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
    plain_args,
    run_child,
    saved_run,
    summarize,
)

K = 128
FULL_VOCABS = (49152, 151936)  # SmolLM2 / Llama-2-style 49k, Qwen2-style 152k
FULL_LENGTHS = (512, 1024, 2048)
PAIRED_MAX_LENGTH = 1024  # two (1, L, V) sides plus two materialised teachers: 2048 x 152k needs ~15 GB
PAIRS = (
    ("sparse_kd", "full_kd"), ("sparse_kd", "full_kd_chunked"), ("dpd", "full_dpd"),
    ("fused_dpd", "full_dpd_head"), ("dpd_head", "full_dpd_head"),
)  # fmt: skip
FUSED_VARIANTS = ("fused_dpd", "dpd_head", "full_dpd_head")
HIDDEN = 1024  # the LM head's input size in --fused mode
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ------------------------------------------------------------------------------------------------- child
def child(spec: dict) -> dict:
    """Measure one variant at one shape; returns per-repeat seconds and peak-growth bytes."""
    import torch

    from bench import loss_variants as lv
    from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes
    from dualdistill.teacher_logits import TeacherLogits

    torch.set_num_threads(spec["threads"])
    device, variant = spec["device"], spec["variant"]
    dtype = getattr(torch, spec["dtype"])
    b, length, vocab = spec["batch"], spec["length"], spec["vocab"]
    sides = 2 if variant in lv.PAIRED or variant in lv.HEAD else 1
    if variant in lv.HEAD:  # hidden states + LM head, allocated before the baseline (the logits are not)
        students = [lv.make_head_side(b, length, vocab, spec["hidden"], device, dtype, seed=0)]
    else:
        students = [lv.make_student(b, length, vocab, device, dtype, seed=10 * i) for i in range(sides)]
    sources = (
        [lv.make_sparse_teacher(b, length, vocab, K, device, seed=10 * i) for i in range(sides)]
        if variant in lv.SPARSE
        else []
    )
    if variant in lv.STACKED:  # one 2B-row teacher (and one (2B, L, V) leaf), built before the baseline
        sources = [TeacherLogits.cat(sources)]
        if variant not in lv.HEAD:
            students = [lv.stack_students(students)]
    cuda = device.startswith("cuda")
    seconds, peaks = [], []
    for rep in range(spec["reps"] + 1):
        for s in students:
            for leaf in (s.hidden, s.weight) if variant in lv.HEAD else (s.logits,):
                leaf.grad = None
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            if not reset_peak_rss():  # without the reset, VmHWM would include earlier peaks
                raise RuntimeError("cannot reset the resident-set peak (/proc/self/clear_refs); Linux only")
            base = rss_bytes()
        if sources:
            teachers = [lv.clone_teacher(t) for t in sources]
        else:
            teachers = [
                lv.make_full_teacher(b, length, vocab, device, dtype, seed=10 * i) for i in range(sides)
            ]
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = lv.loss_fn(variant, students, teachers)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base
        if not torch.isfinite(loss.detach()).item():
            raise RuntimeError(f"{variant}: non-finite loss {loss.item()}")
        del teachers, loss
        if rep > 0:  # rep 0 warms up kernels, thread pools and lazy imports
            seconds.append(elapsed)
            peaks.append(peak)
    return {"seconds": seconds, "peak_bytes": peaks, **spec}


# ------------------------------------------------------------------------------------------------ parent
def configs(
    quick: bool,
    vocabs: tuple[int, ...] = FULL_VOCABS,
    lengths: tuple[int, ...] = FULL_LENGTHS,
    fused: bool = False,
) -> list[tuple[int, int, tuple[str, ...]]]:
    """(V, L, variants) to measure."""
    if fused:
        return [(vocab, length, FUSED_VARIANTS) for vocab in vocabs for length in lengths]
    if quick:
        return [(49152, 512, ("sparse_kd", "full_kd"))]
    out = []
    for vocab in vocabs:
        for length in lengths:
            variants = ("sparse_kd", "full_kd", "full_kd_chunked")
            if length <= PAIRED_MAX_LENGTH:
                variants += ("dpd", "full_dpd")
            out.append((vocab, length, variants))
    return out


def measure(
    quick: bool, rounds: int, reps: int, threads: int, device: str, dtype: str,
    vocabs: tuple[int, ...] = FULL_VOCABS, lengths: tuple[int, ...] = FULL_LENGTHS,
    fused: bool = False, hidden: int = HIDDEN,
) -> list[dict]:  # fmt: skip
    """Run every configuration; rounds alternate the variant order. Returns one record per config+variant."""
    records = []
    for vocab, length, variants in configs(quick, vocabs, lengths, fused):
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(rounds):
            order = variants if r % 2 == 0 else tuple(reversed(variants))
            for variant in order:
                spec = dict(
                    variant=variant,
                    vocab=vocab,
                    length=length,
                    batch=1,
                    reps=reps,
                    threads=threads,
                    device=device,
                    dtype=dtype,
                    hidden=hidden,
                )
                print(f"[loss_memory] V={vocab} L={length} {variant} round {r + 1}/{rounds}", file=sys.stderr)
                runs[variant].append(
                    run_child(["bench/loss_memory.py", "--child", json.dumps(spec)], env=CHILD_ENV)
                )
        for variant, results in runs.items():
            records.append(
                {
                    "vocab": vocab,
                    "length": length,
                    "variant": variant,
                    "seconds": [s for res in results for s in res["seconds"]],
                    "peak_bytes": [p for res in results for p in res["peak_bytes"]],
                    "round_median_seconds": [summarize(res["seconds"]).median for res in results],
                    "round_median_peak": [summarize(res["peak_bytes"]).median for res in results],
                }
            )
    return records


def ratio_rows(records: list[dict]) -> list[dict]:
    """Sparse / full ratios of median peak growth and median time, per configuration and pair."""
    by_key = {(r["vocab"], r["length"], r["variant"]): r for r in records}
    rows = []
    for vocab, length in sorted({(r["vocab"], r["length"]) for r in records}):
        for sparse, full in PAIRS:
            a, b = by_key.get((vocab, length, sparse)), by_key.get((vocab, length, full))
            if a is None or b is None:
                continue
            mem = [x / y for x, y in zip(a["round_median_peak"], b["round_median_peak"], strict=True)]
            sec = [x / y for x, y in zip(a["round_median_seconds"], b["round_median_seconds"], strict=True)]
            rows.append(
                {
                    "vocab": vocab,
                    "length": length,
                    "sparse": sparse,
                    "full": full,
                    "memory_ratio": summarize(mem).as_dict(),
                    "time_ratio": summarize(sec).as_dict(),
                    "memory_ratio_of_medians": summarize(a["peak_bytes"]).median
                    / summarize(b["peak_bytes"]).median,
                    "time_ratio_of_medians": summarize(a["seconds"]).median / summarize(b["seconds"]).median,
                }
            )
    return rows


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocabs = sorted({r["vocab"] for r in records})
    fig, axes = plt.subplots(2, len(vocabs), figsize=(5.5 * len(vocabs), 7), squeeze=False)
    for col, vocab in enumerate(vocabs):
        for variant in dict.fromkeys(r["variant"] for r in records):
            pts = sorted((r["length"], r) for r in records if r["vocab"] == vocab and r["variant"] == variant)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            for row, key, scale in ((0, "peak_bytes", 2**-20), (1, "seconds", 1.0)):
                s = [summarize(p[1][key]) for p in pts]
                axes[row][col].errorbar(
                    xs,
                    [x.median * scale for x in s],
                    yerr=[[(x.median - x.low) * scale for x in s], [(x.high - x.median) * scale for x in s]],
                    marker="o",
                    capsize=3,
                    label=variant,
                )
        axes[0][col].set_title(f"V = {vocab}, B = 1, k = {K}")
        axes[0][col].set_ylabel("peak memory growth (MiB)")
        axes[1][col].set_ylabel("loss forward + backward (s)")
        for row in (0, 1):
            axes[row][col].set_xlabel("sequence length L")
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_yscale("log")
            axes[row][col].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(
    records: list[dict], ratios: list[dict], args: argparse.Namespace, info: dict, argv: list[str]
) -> str:
    mib = 2**-20
    lines = [
        header(
            "Fused loss memory and time (hidden states + LM head, V = 151,936)"
            if getattr(args, "fused", False)
            else "Loss memory and time (sparse k = 128 vs full-vocabulary KD)",
            command_line("bench/loss_memory.py", argv),
            info,
        )
    ]
    lines.append(
        f"B = 1, {args.dtype} logits on {args.device}, {args.threads} thread(s); {args.rounds} round(s) x {args.reps} "
        "timed repeats per variant, each round in fresh child processes (order alternating). Cells: median "
        "[spread] over all timed repeats (IQR for n >= 4, else min-max). Variants: sparse_kd = "
        "`sparse_kd_loss` (forward KL, k = 128 + tail, chunk_size 512); full_kd = full-vocabulary forward KL "
        "on materialised teacher logits, torchtune ForwardKLLoss style; full_kd_chunked = the same over 8 "
        'sequence chunks (torchtune\'s chunked form); dpd = `dpd_loss` preset "dpd" on a (chosen, rejected) '
        "pair; full_dpd = the same objective with full log-softmax and full_kd on both sides "
        "(`bench/loss_variants.py`). All are forward + backward.\n\n"
        "Peak memory, measured: every (variant, V, L) runs in a fresh process. After the student logits "
        "(and ids, masks) are allocated, the resident-set high-water mark is reset (Linux: `5` written to "
        "/proc/self/clear_refs; on CUDA `torch.cuda.reset_peak_memory_stats`) and the resident set is "
        "read as the baseline; the teacher inputs are then allocated (the sparse rows, or the (1, L, V) teacher "
        "logits) and the loss runs forward + backward. Peak growth = VmHWM - baseline: teacher inputs + "
        "every intermediate + the logits' gradient. glibc is told to mmap every allocation >= 64 KiB "
        "(MALLOC_MMAP_THRESHOLD_), so freed buffers leave the resident set at once and cannot hide later "
        "growth; the first repeat is a warm-up.\n"
    )
    rows = []
    for r in records:
        one = r["length"] * r["vocab"] * 4 * mib
        rows.append(
            [
                r["vocab"],
                r["length"],
                r["variant"],
                f"{one:.0f}",
                fmt(summarize(r["peak_bytes"]), 4, mib),
                fmt(summarize(r["seconds"]), 3),
            ]
        )
    lines.append(
        markdown_table(["V", "L", "variant", "one (1,L,V) fp32 (MiB)", "peak growth (MiB)", "time (s)"], rows)
    )
    lines.append("\nRatios (sparse / full; spread over rounds of the per-round median ratio):\n")
    rrows, mem_ok, time_ok = [], [], []
    for q in ratios:
        m, t = q["memory_ratio_of_medians"], q["time_ratio_of_medians"]
        if q["full"] != "full_kd_chunked":
            mem_ok.append(m <= 0.3)
            time_ok.append(t <= 1.0)
        rrows.append(
            [
                q["vocab"],
                q["length"],
                f"{q['sparse']} / {q['full']}",
                f"{m:.3f} ({fmt(q['memory_ratio'], 3)})",
                f"{t:.3f} ({fmt(q['time_ratio'], 3)})",
            ]
        )
    lines.append(markdown_table(["V", "L", "pair", "memory ratio", "time ratio"], rrows))
    if getattr(args, "fused", False):
        fused = [q for q in ratios if q["sparse"] == "fused_dpd"]
        mem = [q["memory_ratio_of_medians"] for q in fused]
        sec = [q["time_ratio_of_medians"] for q in fused]
        mem_ok, time_ok = [m <= 0.15 for m in mem], [t <= 1.0 for t in sec]
        measured_at = ", ".join(f"{n:,}" for n in sorted({q["length"] for q in fused}))
        lines.append(
            f"\nGoals (fused_dpd / full_dpd_head at L = {measured_at}; the goal is stated at L = 2,048): "
            f"memory <= 0.15x "
            f"{'met' if mem and all(mem_ok) else '**not met**'} ({span(mem) if mem else '-'}), time <= 1.0x "
            f"{'met' if sec and all(time_ok) else '**not met**'} ({span(sec) if sec else '-'}).\n"
        )
    else:
        lines.append(
            f"\nGoals (against the plain full-vocabulary baselines full_kd / full_dpd): memory <= 0.3x met in "
            f"{sum(mem_ok)}/{len(mem_ok)} configurations, time <= 1.0x met in {sum(time_ok)}/{len(time_ok)}.\n"
        )
    lines.append(reading(records, args.device))
    if getattr(args, "fused", False):
        lines.append(
            f"Fused mode (`--fused`, H = {args.hidden}): the inputs are the last hidden states (2B, L, H) and the "
            "LM head (V, H), allocated before the baseline; fused_dpd = `fused_dpd_loss` (preset dpd: chunks of "
            "at most fused_chunk_mib = 64 MiB, 110 rows at V = 151,936, in one reused buffer; never the logits); dpd_head = `dpd_loss` on F.linear(hidden, head); full_dpd_head = the "
            "full-vocabulary objective (full_dpd) on F.linear(hidden, head). Every variant pays the head's "
            "weight gradient (V x H fp32); the others also hold the (2B, L, V) logits and their gradient. "
            "Goal: fused_dpd / full_dpd_head memory <= 0.15x, time <= 1.0x.\n"
        )
        lines.append(fused_reading(records, args.hidden))
    lines.append(f"![loss memory and time](img/{image_name(args.device, getattr(args, 'fused', False))})\n")
    return "\n".join(lines)


def fused_reading(records: list[dict], hidden: int) -> str:
    """What fused_dpd's peak is made of, from the records (MiB)."""
    mib = 2**-20
    fused = [r for r in records if r["variant"] == "fused_dpd"]
    if not fused:
        return ""
    parts = []
    for r in fused:
        grad = r["vocab"] * hidden * 4 * mib
        peak = summarize(r["peak_bytes"]).median * mib
        parts.append(f"{peak:.0f} MiB at L = {r['length']:,} (of which the weight gradient V x H x 4 = {grad:.0f} MiB)")
    return (
        "Reading. fused_dpd's peak growth is " + "; ".join(parts) + ": the rest is one [chunk, V] float32 "
        "buffer (64 MiB) and (rows, H)- or (rows, k)-sized tensors, none of which grows with V x L, while the "
        "other variants' peaks grow with L. Times come from a 2-core machine shared with other jobs (hence "
        "spreads of tens of percent; dpd_head's time in particular is not a property of the code): read "
        "the same-run ratios.\n"
    )


def span(xs: list[float]) -> str:
    """'0.29-0.36x', or '0.36x' when all values round alike."""
    lo, hi = f"{min(xs):.2f}", f"{max(xs):.2f}"
    return f"{lo}x" if lo == hi else f"{lo}-{hi}x"


def reading(records: list[dict], device: str) -> str:
    """What the numbers say, in units of one (1, L, V) float32 tensor (computed from the records)."""

    def units(variant: str) -> list[float]:
        return [
            summarize(r["peak_bytes"]).median / (r["length"] * r["vocab"] * 4)
            for r in records if r["variant"] == variant
        ]  # fmt: skip

    full, sparse, chunked = units("full_kd"), units("sparse_kd"), units("full_kd_chunked")
    if not full or not sparse:
        return ""

    text = (
        f"\nReading. In units of one (1, L, V) float32 tensor, full_kd's peak growth is {span(full)} at every "
        "size (teacher logits, teacher softmax, student log-softmax, their product "
        f"and the logits' gradient) and sparse_kd's is {span(sparse)}: the logits' gradient "
        "(1x, the same in every variant) plus the loss's [chunk_size = 512, V] float32 work buffers, which do "
        f"not grow with L. The ratio therefore falls with L toward 1/{max(full):.2f} = {1 / max(full):.2f}; at "
        "the lengths where the work buffers are about as large as the gradient it stays above the 0.3x goal. "
        "A smaller `chunk_size` would shrink them (not measured here). "
    )
    if chunked:
        text += (
            f"full_kd_chunked (torchtune's chunked form) peaks at {span(chunked)}: "
            "autograd saves every chunk's teacher softmax and student log-softmax for the backward pass, so "
            "chunking only drops per-chunk temporaries. "
        )
    if device == "cpu":
        text += (
            "Times are single-thread CPU on a machine shared with other work (hence the wide spreads); the "
            "paired ratios are the figure to read."
        )
    return text + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="V=49152, L=512, sparse_kd vs full_kd only")
    p.add_argument(
        "--rounds", type=int, default=None, help="fresh-process rounds per variant (default 2, quick 1)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed repeats per child (default 3, quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per child (the machine is shared)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="logits dtype: float32 or bfloat16")
    p.add_argument("--vocabs", default=",".join(map(str, FULL_VOCABS)), help="comma list of V (full mode)")
    p.add_argument("--lengths", default=",".join(map(str, FULL_LENGTHS)), help="comma list of L (full mode)")
    p.add_argument(
        "--fused", action="store_true",
        help="fused_dpd vs dpd_head vs full_dpd_head from hidden states + LM head (at --vocabs x --lengths)",
    )  # fmt: skip
    p.add_argument("--hidden", type=int, default=HIDDEN, help="hidden size H of the LM head in --fused mode")
    p.add_argument("--child", help=argparse.SUPPRESS)
    add_output_args(p)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.vocabs = tuple(int(v) for v in str(args.vocabs).split(","))
    args.lengths = tuple(int(v) for v in str(args.lengths).split(","))
    args.reps = args.reps or 3
    return args


def image_name(device: str, fused: bool = False) -> str:
    stem = "bench_loss_memory_fused" if fused else "bench_loss_memory"
    return f"{stem}.png" if device == "cpu" else f"{stem}_{device.split(':')[0]}.png"


def run(argv: list[str]) -> Section:
    args = parse(argv)
    info = machine_info()
    records = measure(
        args.quick, args.rounds, args.reps, args.threads, args.device, args.dtype, args.vocabs, args.lengths,
        args.fused, args.hidden,
    )  # fmt: skip
    ratios = ratio_rows(records)
    plot(records, args.img_dir / image_name(args.device, args.fused))
    md = render(records, ratios, args, info, argv)
    data = {"machine": info, "records": records, "ratios": ratios, "goals": goals(ratios, args.device),
            "argv": argv, "args": plain_args(args)}  # fmt: skip
    return Section(*section_name(args), md, data)


def rerender(path: Path) -> Section:
    """The section re-rendered from a saved JSON: the same numbers, command and date, today's wording."""
    data, args, argv = saved_run(path, parse)
    md = render(data["records"], data["ratios"], args, data["machine"], argv)
    data["goals"] = goals(data["ratios"], args.device)
    return Section(*section_name(args), md, {**data, "argv": argv})


def section_name(args: argparse.Namespace) -> tuple[str, str]:
    """--fused writes its own section (bench/results/loss_memory_fused.*), beside the sparse one."""
    if getattr(args, "fused", False):
        return "loss_memory_fused", "Fused loss memory and time"
    return "loss_memory", "Loss memory and time"


def goals(ratios: list[dict], device: str) -> list[dict]:
    """The summary lines run_all.py puts at the top of docs/benchmarks.md."""
    out = []
    for sparse, full, memory_bound in (
        ("sparse_kd", "full_kd", 0.3), ("dpd", "full_dpd", 0.3), ("fused_dpd", "full_dpd_head", 0.15),
    ):  # fmt: skip
        mine = [q for q in ratios if q["sparse"] == sparse and q["full"] == full]
        if not mine:
            continue
        for key, bound, what in (
            ("memory_ratio_of_medians", memory_bound, "memory"),
            ("time_ratio_of_medians", 1.0, "time"),
        ):
            vals = [q[key] for q in mine]
            met = sum(v <= bound for v in vals)
            out.append(
                {
                    "item": f"loss {what} ({device})",
                    "goal": f"{sparse} / {full} {what} <= {bound}x",
                    "measured": f"{span(vals)} over {len(vals)} (V, L); met in {met}/{len(vals)}",
                    "met": met == len(vals),
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    section = rerender(args.render_from) if args.render_from else run(argv)
    section.save(args.results_dir)
    print(section.markdown)


if __name__ == "__main__":
    main()
