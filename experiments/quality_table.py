"""Does DPD beat its ablations? The quality study: 8 methods x learning-rate sweep x seeds, same init, data
and budget; every metric on held-out test queries with a 95% bootstrap interval (docs/results.md).

    .venv/bin/python experiments/quality_table.py [--size cpu|gpu] [--runs-dir runs/quality] [--report-only]

1. Data (experiments/quality/data.py, cached): SFT student, filtered train pairs (right positive vs wrong
   negative), held-out test pairs and unfiltered test samples, the teacher's rows captured once.
2. Learning-rate sweep, seed 0, every trained method: train from the capture, greedy accuracy on the
   validation queries. Each method's rate = its best validation accuracy (ties: the smaller rate).
3. At the picked rate: test measurements of seed 0, then seeds 1, 2 (train + test).
4. Report: experiments/results/quality_table.{json,md}, docs/img/quality_table.png, with the runs still
   missing named. Every finished run is a JSON under RUNS/results; a rerun skips them (resumable), and
   --report-only aggregates whatever has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.quality.config import METHODS, StudyConfig, study_config  # noqa: E402
from experiments.quality.report import differences, differences_markdown, markdown, pick_lrs, plot, summarize  # noqa: E402
from experiments.quality.runs import run_name, run_one  # noqa: E402


def planned_runs(config: StudyConfig, picked: dict) -> list[tuple[str, float | None, int, bool]]:
    """(method, lr, seed, test) in execution order; runs that depend on an unfinished pick are left out."""
    plan: list[tuple[str, float | None, int, bool]] = []
    trained = [m for m in config.methods if METHODS[m] is not None]
    if "sft" in config.methods:
        plan.append(("sft", None, 0, True))
    plan += [(m, lr, config.seeds[0], False) for m in trained for lr in config.learning_rates]
    for seed in config.seeds:
        plan += [(m, picked[m], seed, True) for m in trained if picked.get(m) is not None]
    return plan


def expected_runs(config: StudyConfig) -> list[str]:
    names = ["sft-seed0 (test)"] if "sft" in config.methods else []
    for m in (m for m in config.methods if METHODS[m] is not None):
        names += [f"{run_name(m, lr, config.seeds[0])} (val)" for lr in config.learning_rates]
        names += [f"{m}-<picked lr>-seed{s} (test)" for s in config.seeds]
    return names


def load_records(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((runs_dir / "results").glob("*.json"))]


def missing_runs(config: StudyConfig, records: list[dict], picked: dict) -> list[str]:
    have_val = {(r["method"], r["lr"], r["seed"]) for r in records}
    have_test = {(r["method"], r["lr"], r["seed"]) for r in records if "test" in r}
    missing = []
    if "sft" in config.methods and ("sft", None, 0) not in have_test:
        missing.append("sft (test)")
    for m in (m for m in config.methods if METHODS[m] is not None):
        missing += [f"{run_name(m, lr, config.seeds[0])} (val)" for lr in config.learning_rates
                    if (m, lr, config.seeds[0]) not in have_val]  # fmt: skip
        lr = picked.get(m)
        for s in config.seeds:
            if lr is None or (m, lr, s) not in have_test:
                missing.append(f"{m}-{'<lr not picked yet>' if lr is None else f'lr{lr:g}'}-seed{s} (test)")
    return missing


def report(config: StudyConfig, runs_dir: Path, data_facts: dict, wall: float, out: Path, png: Path) -> str:
    from dualdistill.study.bootstrap import bootstrap_ci

    records = load_records(runs_dir)
    picked = pick_lrs(records, config.learning_rates)
    table = summarize(records, list(config.methods), picked, config.pass_k)
    diffs = differences(records, list(config.methods), picked, config.pass_k, against="dpd")
    prompts = data_facts.get("prompts")
    teacher = {"acc": bootstrap_ci(prompts["test"]["teacher_scores"]).to_dict()} if prompts else None
    task_check = {}  # the task's bar: teacher greedy >= 0.6, SFT student <= 0.3, on val + test (>= 200 queries)
    if prompts:
        for who in ("teacher", "sft"):
            scores = prompts["val"][f"{who}_scores"] + prompts["test"][f"{who}_scores"]
            task_check[f"{who}_greedy_acc"] = bootstrap_ci(scores).to_dict()
    missing = missing_runs(config, records, picked)
    sweep = {f"{r['method']} lr {r['lr']:g}": sum(r["val"]["val_correct"]) / len(r["val"]["val_correct"])
             for r in records if r["lr"] is not None and r["seed"] == config.seeds[0]}  # fmt: skip
    import torch

    facts = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": config.threads,
                    "note": "2 CPU cores shared with other jobs"},  # fmt: skip
        "config": config.to_dict(), "data": {k: v for k, v in data_facts.items() if k != "prompts"},
        "task_check": task_check, "teacher": teacher, "picked_lr": picked, "val_sweep": sweep, "table": table,
        "dpd_minus": diffs,
        "runs_finished": len(records), "runs_missing": missing, "wall_seconds": wall,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    text = f"Task `{config.task}`, greedy verifier accuracy on the val + test queries (95% bootstrap interval):\n\n"
    for name, c in task_check.items():
        text += f"- {name}: {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}] over {c['n']} queries\n"
    pairs = data_facts.get("pairs") or {}
    for name, summary in pairs.items():
        text += f"- pairs `{name}`: kept {summary.get('kept')} of {summary.get('total')}, dropped {summary.get('dropped_by_reason')}\n"
    text += "\n" + (markdown(table, teacher, config.pass_k) if teacher else "(no test results yet)\n")
    text += ("\nPaired differences, full DPD minus each method (the same test queries resampled together, each side"
             " averaged over its seeds; bold: the 95% interval excludes 0):\n\n" + differences_markdown(diffs, config.pass_k))
    text += "\nValidation accuracy of the learning-rate sweep (seed 0):\n\n" + "".join(
        f"- {k}: {v:.3f}\n" for k, v in sorted(sweep.items())
    )
    text += f"\nRuns missing ({len(missing)}):" + ("".join(f"\n- {m}" for m in missing) if missing else " none") + "\n"
    out.with_suffix(".md").write_text(text)
    if table and teacher:
        plot(png, table, teacher, config.pass_k)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", help="cpu (default) | gpu (10x data and budget, CUDA) | tiny (tests)")
    parser.add_argument("--task", default=None, help="override the config's task (dualdistill.tasks.registry)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--teacher-dir", type=Path, default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--student-dir", type=Path, default=None, help="default: the teacher pruned")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results" / "quality_table")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "quality_table.png")
    parser.add_argument("--report-only", action="store_true", help="aggregate the finished runs and stop")
    parser.add_argument("--data-only", action="store_true", help="make (or finish) the data stage and stop")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at once, each a process with its own teacher service (default 1)")  # fmt: skip
    args = parser.parse_args(argv)
    config = study_config(args.size, **({"task": args.task} if args.task else {}))
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    import torch

    from dualdistill.client import TeacherClient
    from dualdistill.demo.service import run_service
    from experiments.quality.data import GENERATE_TIMEOUT, make_data

    torch.set_num_threads(config.threads)
    began = time.perf_counter()
    data_dir = args.runs_dir / "data"
    facts_path = data_dir / "facts.json"
    if args.report_only:  # the wall time is the study's, from its last report (0 when there is none)
        last = args.results.with_suffix(".json")
        wall = json.loads(last.read_text()).get("wall_seconds", 0.0) if last.is_file() else 0.0
        print(report(config, args.runs_dir, partial_facts(data_dir), wall, args.results, args.plot))
        return 0
    service_factory = partial(run_service, log_path=args.runs_dir / "service.log", threads=config.threads,
                              extra_args=["--log-level", "warning", "--device", config.device,
                                          "--engine", config.engine])  # fmt: skip
    data, service_cm, service = make_data(config, data_dir, service_factory, args.teacher_dir, args.student_dir)
    data_seconds = time.perf_counter() - began
    if facts_path.is_file():  # made by an earlier (or the first worker's) run: keep its data stage time
        data_seconds = json.loads(facts_path.read_text()).get("data_seconds", data_seconds)
    data_facts = {"pairs": data.pair_summaries, "prompts": data.prompts, "data_seconds": data_seconds,
                  "train_pairs": sum(1 for line in data.train_pairs.open() if line.strip())}  # fmt: skip
    if not facts_path.is_file():
        facts_path.write_text(json.dumps(data_facts) + "\n")
    print(f"data ready in {data_facts['data_seconds']:.0f} s: {data_facts['train_pairs']} training pairs", flush=True)
    if args.data_only:
        service_cm.__exit__(None, None, None)
        return 0
    # the other workers: the same command with --workers 1, once the data exist (they find it cached)
    argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    helpers = [_spawn_worker(argv, args.runs_dir / f"worker-{i}.log") for i in range(1, args.workers)]
    try:
        with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT) as client:
            while True:
                picked = pick_lrs(load_records(args.runs_dir), config.learning_rates)
                todo = [p for p in planned_runs(config, picked) if not _finished(args.runs_dir, *p)]
                if not todo:
                    break
                mine = next((p for p in todo if claim(args.runs_dir, run_name(*p[:3]))), None)
                if mine is None:  # every open run is another worker's, or waits for a learning-rate pick
                    time.sleep(10)
                    continue
                method, lr, seed, test = mine
                try:
                    run_one(config, data, args.runs_dir, method, lr, seed, test=test, client=client)
                finally:
                    release(args.runs_dir, run_name(method, lr, seed))
                report(config, args.runs_dir, data_facts, time.perf_counter() - began, args.results, args.plot)
    finally:
        service_cm.__exit__(None, None, None)
        for proc in helpers:
            proc.wait()
    print(report(config, args.runs_dir, data_facts, time.perf_counter() - began, args.results, args.plot))
    print(f"study wall time {(time.perf_counter() - began) / 60:.1f} min")
    return 0


def partial_facts(data_dir: Path) -> dict:
    """The data facts, also while the data stage is still running (what exists so far)."""
    if (data_dir / "facts.json").is_file():
        return json.loads((data_dir / "facts.json").read_text())
    facts: dict = {"note": "data stage unfinished"}
    for name, key in (("prompts.json", "prompts"), ("pairs-summary.json", "pairs")):
        if (data_dir / name).is_file():
            facts[key] = json.loads((data_dir / name).read_text())
    if "pairs" not in facts:  # the pairs files written so far (they grow as queries finish)
        facts["pairs"] = {}
        for name in ("train", "test-pairs", "test-samples"):
            kept, dropped = data_dir / f"{name}.jsonl", data_dir / f"{name}.dropped.jsonl"
            if kept.is_file():
                reasons = Counter(json.loads(line)["reason"] for line in dropped.open()) if dropped.is_file() else {}
                n_kept = sum(1 for line in kept.open() if line.strip())
                summary = data_dir / f"{name}.summary.json"
                done = summary.is_file() and json.loads(summary.read_text()).get("kept") == n_kept
                facts["pairs"][name if done else f"{name} (in progress)"] = {
                    "kept": n_kept, "total": n_kept + sum(reasons.values()), "dropped_by_reason": dict(reasons)}
    return facts


def _claim_path(runs_dir: Path, name: str) -> Path:
    return runs_dir / "claims" / f"{name}.pid"


def claim(runs_dir: Path, name: str) -> bool:
    """Take run `name` for this process (a file created exclusively, holding our pid); False when a live
    process holds it. A claim left by a dead process (a killed worker) is taken over."""
    path = _claim_path(runs_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            return False  # being written right now
        if holder == os.getpid():
            return True
        if holder and _alive(holder):
            return False
        path.unlink(missing_ok=True)
        return claim(runs_dir, name)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def release(runs_dir: Path, name: str) -> None:
    _claim_path(runs_dir, name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn_worker(argv: list[str], log: Path):
    import subprocess

    rest, skip = [], False
    for a in argv:  # drop our --workers N
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            rest.append(a)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *rest, "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _finished(runs_dir: Path, method: str, lr: float | None, seed: int, test: bool) -> bool:
    path = runs_dir / "results" / f"{run_name(method, lr, seed)}.json"
    return path.is_file() and (not test or "test" in json.loads(path.read_text()))


if __name__ == "__main__":
    sys.exit(main())
