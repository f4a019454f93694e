"""Teacher forward tokens and wall time when 1, 2 or 4 students request the same data at the same time.

    python bench/many_students.py [--quick] [--model smollm2] [--students 1,2,4] [--rounds N]

One `dualdistill serve` subprocess (default result cache, `--cache memory`). Per round and student
count N, a fresh data set (D random sequences of T tokens, start s; never requested before, so earlier
rounds cannot warm the cache) is requested by N threads, each with its own TeacherClient, in the same
order, in batches of b sequences, on three schedules: "simultaneous" (all released by one barrier, so
identical requests are in flight together), "staggered" (student i starts once student i - 1 has its
first batch back) and "sequential" (student i starts once student i - 1 has finished, so only the result
cache can spare the teacher). Forward tokens = the increase of the
server's `dualdistill_forward_tokens_total{model}` (/metrics) over the run, next to the increases of
`dualdistill_deduplicated_sequences_total` and `dualdistill_cache_hits_total`; the goal compares N = 4
with N = 1 (<= 1.1x). Every student's results are checked equal to the first student's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    ROOT,
    Section,
    add_output_args,
    command_line,
    fmt,
    header,
    machine_info,
    markdown_table,
    summarize,
)

GOAL = 1.1
SCHEDULES = {
    "simultaneous": "all students released together",
    "staggered": "student i starts when student i - 1 has its first batch back",
    "sequential": "student i starts when student i - 1 has finished",
}


def scrape(http_url: str, metric: str, model: str) -> float:
    """The value of `metric{model=...}` in the server's /metrics (0 if absent)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(http_url + "/metrics", timeout=30).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels.get("model") == model:
                total += sample.value
    return total


def server_version() -> str:
    """The commit of the working tree and how many files under server/ differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = len([line for line in git("status", "--porcelain", "server").splitlines() if line.strip()])
    return f"commit {head}" + (f" + {changed} uncommitted file(s) under server/" if changed else "")


def run_students(
    client_factory, model: str, data: np.ndarray, start: int, batch: int, n: int, top_k: int, schedule: str
):
    """N students over the same batches; returns (wall seconds, per-student results).

    schedule "simultaneous": all released together (identical requests in flight at once);
    "staggered": student i starts once student i - 1 has its first batch back (they trail one another
    through the data, so later students ask for rows computed a moment ago); "sequential": student i
    starts once student i - 1 has finished (every later request can only be served by the cache).
    """
    barrier = threading.Barrier(n + 1)
    first_done = [threading.Event() for _ in range(n)]
    all_done = [threading.Event() for _ in range(n)]
    outputs: list[list] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def student(index: int) -> None:
        client = client_factory()
        try:
            barrier.wait()
            if index > 0 and schedule != "simultaneous":
                (first_done if schedule == "staggered" else all_done)[index - 1].wait()
            for b in range(0, len(data), batch):
                chunk = data[b : b + batch]
                outputs[index] += client.logits(model, chunk.tolist(), [start] * len(chunk), top_k=top_k)
                first_done[index].set()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
        finally:
            first_done[index].set()  # never leave a trailing student waiting
            all_done[index].set()
            client.close()

    threads = [threading.Thread(target=student, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, outputs


def same(a, b) -> bool:
    return all(
        np.array_equal(x.top_ids, y.top_ids) and np.array_equal(x.top_logprobs, y.top_logprobs)
        for x, y in zip(a, b, strict=True)
    )


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[dict], str]:
    from bench.models import model_dir
    from dualdistill import TeacherClient
    from tests.fixtures.server_process import start_server

    name, directory = model_dir(args.model, workdir)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the server's
    version = server_version()
    records = []
    with start_server({name: directory}, "--cache", args.cache, ready_timeout=600, wire_kernels="auto") as server:
        vocab = TeacherClient(server.http_url).model_info(name).vocab_size
        rng = np.random.default_rng(0)

        def factory():
            return TeacherClient(server.http_url, format="binary", timeout=600)

        warm = rng.integers(0, vocab, (args.batch, args.seq_len), dtype=np.int64)  # first-request costs
        run_students(factory, name, warm, args.start, args.batch, 1, args.top_k, "simultaneous")
        counters = ("forward_tokens", "deduplicated_sequences", "cache_hits")
        for r in range(args.rounds):
            for schedule in args.schedules:
                for n in args.students:
                    data = rng.integers(0, vocab, (args.sequences, args.seq_len), dtype=np.int64)
                    before = {c: scrape(server.http_url, f"dualdistill_{c}_total", name) for c in counters}
                    wall, outputs = run_students(
                        factory, name, data, args.start, args.batch, n, args.top_k, schedule
                    )
                    after = {c: scrape(server.http_url, f"dualdistill_{c}_total", name) for c in counters}
                    if not all(same(outputs[0], o) for o in outputs[1:]):
                        raise RuntimeError(f"students disagree on the teacher rows (N={n}, round {r})")
                    records.append(
                        {"round": r, "schedule": schedule, "students": n, "dataset_tokens": int(data.size),
                         "wall_seconds": wall, **{c: after[c] - before[c] for c in counters}}
                    )  # fmt: skip
                    print(f"[many_students] round {r} {schedule} N={n}: {records[-1]['forward_tokens']:.0f} "
                          f"tokens, {wall:.2f}s", file=sys.stderr)  # fmt: skip
    return records, version


def render(records: list[dict], version: str, args: argparse.Namespace, info: dict, argv: list[str]) -> str:
    lines = [header("Many students (forward tokens for N concurrent students)", command_line("bench/many_students.py", argv), info)]
    lines.append(
        f"Server: {version}, `--cache {args.cache}`, model `{args.model}`, {args.threads} torch thread(s). "
        f"Data set per run: {args.sequences} sequences x {args.seq_len} tokens (start {args.start}), "
        f"requested in batches of {args.batch} with top_k {args.top_k} over HTTP binary. {args.rounds} round(s), "
        "each with fresh data; cells: median [spread]. Ratios are to N = 1 in the same round.\n"
    )
    for schedule in args.schedules:
        mine_all = [r for r in records if r.get("schedule", "simultaneous") == schedule]
        base = {r["round"]: r for r in mine_all if r["students"] == args.students[0]}
        rows = []
        for n in args.students:
            mine = [r for r in mine_all if r["students"] == n]
            tok = [r["forward_tokens"] / base[r["round"]]["forward_tokens"] for r in mine]
            wall = [r["wall_seconds"] / base[r["round"]]["wall_seconds"] for r in mine]
            rows.append(
                [n, fmt(summarize(r["forward_tokens"] for r in mine), 5), fmt(summarize(tok), 3),
                 fmt(summarize(r["deduplicated_sequences"] for r in mine), 3),
                 fmt(summarize(r.get("cache_hits", 0) for r in mine), 3),
                 fmt(summarize(r["wall_seconds"] for r in mine), 3), fmt(summarize(wall), 3)]
            )  # fmt: skip
        lines.append(f"\nSchedule **{schedule}** ({SCHEDULES[schedule]}):\n")
        lines.append(
            markdown_table(
                ["students", "forward tokens", "tokens / N=1", "deduplicated seqs", "cache hits", "wall (s)",
                 "wall / N=1"], rows,
            )  # fmt: skip
        )
    for goal in goals(records, args, version):
        lines.append(
            f"\nGoal, {goal['item'].split(', ')[-1]} ({goal['goal']}): {'met' if goal['met'] else 'not met'} — "
            f"{goal['measured']}."
        )
    lines.append(
        "\nForward tokens count real tokens through the model; a sequence answered by joining an identical one "
        "in flight counts as deduplicated, one answered from the result cache as a cache hit. Wall time is "
        "until the last student has every batch.\n"
    )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 8 sequences of 64 tokens, 1 round")
    p.add_argument("--model", default=None, help="tiny | smollm2 | NAME=DIR (default smollm2, quick tiny)")
    p.add_argument("--students", default="1,2,4")
    p.add_argument("--rounds", type=int, default=None, help="default 3, quick 1")
    p.add_argument("--sequences", type=int, default=None, help="data set size (default 16, quick 8)")
    p.add_argument("--seq-len", type=int, default=None, help="default 128, quick 64")
    p.add_argument("--start", type=int, default=None, help="default T/8")
    p.add_argument("--batch", type=int, default=4, help="sequences per request")
    p.add_argument("--top-k", type=int, default=128)
    p.add_argument("--cache", default="memory", help="server --cache setting")
    p.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma list of {', '.join(SCHEDULES)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    add_output_args(p)
    args = p.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "smollm2")
    args.students = [int(s) for s in args.students.split(",")]
    args.schedules = args.schedules.split(",")
    if not set(args.schedules) <= set(SCHEDULES):
        p.error(f"--schedules: choose from {', '.join(SCHEDULES)}")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.sequences = args.sequences or (8 if args.quick else 16)
    args.seq_len = args.seq_len or (64 if args.quick else 128)
    args.start = args.start or max(1, args.seq_len // 8)
    return args


def run(argv: list[str]) -> Section:
    args = parse(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        records, version = measure(args, Path(tmp))
    md = render(records, version, args, info, argv)
    data = {"machine": info, "server": version, "records": records, "goals": goals(records, args, version)}
    return Section("many_students", "Many students", md, data)


def goals(records: list[dict], args: argparse.Namespace, version: str) -> list[dict]:
    n, one = max(args.students), args.students[0]
    out = []
    for schedule in args.schedules:
        mine = [r for r in records if r.get("schedule", "simultaneous") == schedule]
        base = {r["round"]: r["forward_tokens"] for r in mine if r["students"] == one}
        med = summarize(r["forward_tokens"] / base[r["round"]] for r in mine if r["students"] == n).median
        out.append(
            {"item": f"many students, {schedule}", "goal": f"<= {GOAL}x forward tokens for {n} students vs {one}",
             "measured": f"{med:.2f}x ({version}, --cache {args.cache})", "met": med <= GOAL}
        )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    section = run(argv)
    section.save(parse(argv).results_dir)
    print(section.markdown)


if __name__ == "__main__":
    main()
