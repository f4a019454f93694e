"""The quality table: SFT only, + token KD on positives, + DPO only, full DPD, DistiLLM-2, on equal terms.

    .venv/bin/python experiments/quality_table.py [--config experiments/configs/quality_table.yaml]

Every run starts from the same SFT checkpoint and trains on the same pairs file, with the same seeds,
step budget, batch size and learning rate; only the loss preset differs. Steps:

1. The data: the `dualdistill demo` run of the config's size/seed/workdir (SFT checkpoint, train and
   held-out pairs, all from the arithmetic task). If it is missing, the demo is run first.
2. The teacher, once: a service (teacher + reference = the SFT student) is started; the teacher's (and
   the reference's) rows of every train and held-out pair are captured losslessly (`capture_pairs`), and
   the teacher's rows and greedy answers of the held-out set are collected (`EvalSet`). The service stops.
3. Every (method, seed): `train` from the capture (`teacher_url: capture:DIR`), then the held-out metrics
   of `dualdistill.demo.evaluate` (verifier accuracy over every held-out query, KL(teacher || student) on
   the held-out positives, preference accuracy). Each run's result is saved as soon as it is done, and a
   rerun skips finished runs, so a stopped run continues where it was.
4. RESULTS.json (every run), RESULTS.md (mean and min-max over seeds), the plot PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("verifier_acc", "kl_pos", "pref_acc")
HEADERS = {"verifier_acc": "verifier acc", "kl_pos": "KL(teacher||student) pos", "pref_acc": "pref acc"}


def load_config(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    for key in ("results", "plot", "runs_dir", "demo_workdir"):
        config[key] = ROOT / config[key] if not Path(config[key]).is_absolute() else Path(config[key])
    return config


def demo_run(config: dict[str, Any]):
    """The demo's options and run directory; runs the demo first when its SFT checkpoint or pairs are missing."""
    from dualdistill.demo import DemoOptions, run_demo
    from dualdistill.trainer.sft import is_complete

    models = {key: Path(config[key]) if config.get(key) else None for key in ("teacher_dir", "student_dir")}
    options = DemoOptions(workdir=config["demo_workdir"], seed=config["demo_seed"], threads=config["threads"],
                          progress=False, **models).with_size(config["demo_size"])  # fmt: skip
    run_dir = options.run_dir
    needed = (run_dir / "pairs" / "train.jsonl", run_dir / "pairs" / "eval.jsonl")
    if not (is_complete(run_dir / "student-sft") and all(p.is_file() for p in needed)):
        print(f"no complete demo run in {run_dir}: running the demo first", flush=True)
        run_demo(options)
    return options, run_dir


def capture_teacher(config: dict[str, Any], options: Any, run_dir: Path, capture_dir: Path):
    """Start the service once: capture every pair's rows and collect the held-out set; returns the EvalSet."""
    from functools import partial

    from dualdistill.client import TeacherClient
    from dualdistill.demo.data import query_set
    from dualdistill.demo.evaluate import EvalSet
    from dualdistill.demo.models import teacher_directory
    from dualdistill.demo.pipeline import GENERATE_TIMEOUT, REFERENCE, TEACHER
    from dualdistill.demo.service import run_service
    from dualdistill.protocol.params import LogitsParams
    from dualdistill.trainer.capture.run import capture_pairs
    from dualdistill.trainer.teacher import CaptureTeacher

    pairs = [run_dir / "pairs" / "train.jsonl", run_dir / "pairs" / "eval.jsonl"]
    models = {TEACHER: teacher_directory(options), REFERENCE: run_dir / "student-sft"}
    with run_service(models, log_path=config["runs_dir"] / "service.log", extra_args=["--log-level", "warning"],
                     threads=config["threads"]) as service:  # fmt: skip
        print(f"service ready (pid {service.pid}); capturing {capture_dir}", flush=True)
        with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT, format="binary-lossless") as client:
            params = LogitsParams(top_k=config["top_k"])
            capture_pairs(pairs, client, TEACHER, capture_dir, params=params, reference_model=REFERENCE, progress=False)
            captured = CaptureTeacher(str(capture_dir), TEACHER, params=params)
            print("teacher greedy answers on the held-out queries ...", flush=True)
            try:
                return EvalSet.collect(captured.fetch, partial(client.generate, TEACHER),
                                       query_set("eval", options.size, options.seed), pairs[1],
                                       options.size.max_new_tokens)  # fmt: skip
            finally:
                captured.close()


def train_one(config: dict[str, Any], run_dir: Path, capture_dir: Path, preset: str, seed: int, out: Path) -> Path:
    from dualdistill.demo.pipeline import REFERENCE, TEACHER
    from dualdistill.trainer import TrainConfig, train

    shutil.rmtree(out, ignore_errors=True)
    pairs = run_dir / "pairs" / "train.jsonl"
    n_pairs = sum(1 for line in pairs.open() if line.strip())
    train_config = TrainConfig(
        student=str(run_dir / "student-sft"), pairs=str(pairs), output_dir=str(out),
        teacher_url=f"capture:{capture_dir}", teacher_model=TEACHER, reference=f"served:{REFERENCE}",
        loss_preset=preset, max_steps=config["steps"],
        epochs=max(1, math.ceil(config["steps"] * config["batch_size"] / n_pairs)),
        batch_size=config["batch_size"], learning_rate=float(config["learning_rate"]),
        warmup_steps=config["warmup_steps"], top_k=config["top_k"], seed=seed, device="cpu", verifier="none",
        progress=False, plots=True, keep_checkpoints=1,
    )  # fmt: skip
    result = train(train_config)
    return Path(result.model_dir)


def summarize(runs: list[dict], methods: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """method -> metric -> {mean, min, max, n} over that method's seeds."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for method in methods:
        table[method] = {}
        for metric in METRICS:
            values = [r["metrics"][metric] for r in runs if r["method"] == method and r["metrics"][metric] is not None]
            table[method][metric] = {
                "mean": sum(values) / len(values) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "n": len(values),
            }
    return table


def markdown(table: dict, teacher: dict) -> str:
    lines = ["| method | " + " | ".join(HEADERS[m] for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for method, cells in table.items():
        row = []
        for metric in METRICS:
            c = cells[metric]
            row.append("n/a" if c["mean"] is None else f"{c['mean']:.3f} ({c['min']:.3f}-{c['max']:.3f})")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines.append("| teacher | " + " | ".join(
        "0 (def.)" if m == "kl_pos" else ("n/a" if teacher[m] is None else f"{teacher[m]:.3f}") for m in METRICS
    ) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(path: Path, table: dict, runs: list[dict], teacher: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        means = [table[m][metric]["mean"] or 0.0 for m in methods]
        ax.bar(range(len(methods)), means, color="tab:blue", alpha=0.6)
        for i, method in enumerate(methods):  # every seed's value as a dot: the spread is visible
            values = [r["metrics"][metric] for r in runs if r["method"] == method and r["metrics"][metric] is not None]
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        if metric != "kl_pos":  # accuracies: the full [0, 1] range, the teacher as a dashed line
            ax.set_ylim(0.0, 1.05)
            if teacher.get(metric) is not None:
                ax.axhline(teacher[metric], color="tab:red", linestyle="--", linewidth=1, label="teacher")
                ax.legend(fontsize=8, loc="upper left")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(HEADERS[metric], fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "quality_table.yaml")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the results JSON")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.replot:
        saved = json.loads(config["results"].with_suffix(".json").read_text())
        plot(config["plot"], saved["table"], saved["runs"], saved["teacher"])
        return 0
    import torch

    torch.set_num_threads(config["threads"])
    began = time.perf_counter()
    config["runs_dir"].mkdir(parents=True, exist_ok=True)
    options, run_dir = demo_run(config)
    capture_dir = config["runs_dir"] / "capture"
    eval_set = capture_teacher(config, options, run_dir, capture_dir)
    teacher = eval_set.teacher_metrics()
    done_dir = config["runs_dir"] / "done"
    done_dir.mkdir(exist_ok=True)
    runs: list[dict] = []
    for method, preset in config["methods"].items():
        # "sft" trains nothing: every seed evaluates the same checkpoint with greedy decoding (no spread).
        for seed in config["seeds"]:
            record_path = done_dir / f"{method}-seed{seed}.json"
            if record_path.is_file():
                runs.append(json.loads(record_path.read_text()))
                print(f"{method} seed {seed}: done earlier", flush=True)
                continue
            t0 = time.perf_counter()
            if preset is None:
                model_dir = run_dir / "student-sft"
            else:
                model_dir = train_one(config, run_dir, capture_dir, preset, seed, config["runs_dir"] / f"{method}-seed{seed}")
            metrics = eval_set.model_metrics(model_dir)
            record = {"method": method, "preset": preset, "seed": seed, "metrics": metrics,
                      "seconds": time.perf_counter() - t0, "model_dir": str(model_dir)}  # fmt: skip
            record_path.write_text(json.dumps(record, indent=2) + "\n")
            runs.append(record)
            print(f"{method} seed {seed}: {json.dumps({k: metrics[k] for k in METRICS})} "
                  f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    table = summarize(runs, list(config["methods"]))
    results = config["results"]
    results.parent.mkdir(parents=True, exist_ok=True)
    facts = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpus(),
                    "torch": torch.__version__, "threads": config["threads"]},  # fmt: skip
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
        "demo_run": str(run_dir), "held_out_queries": len(eval_set.queries), "held_out_pairs": len(eval_set.pairs),
        "train_pairs": sum(1 for line in (run_dir / "pairs" / "train.jsonl").open() if line.strip()),
        "teacher": teacher, "table": table, "runs": runs, "wall_seconds": time.perf_counter() - began,
    }  # fmt: skip
    results.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    results.with_suffix(".md").write_text(markdown(table, teacher))
    plot(config["plot"], table, runs, teacher)
    print("\n" + markdown(table, teacher))
    print(f"wrote {results.with_suffix('.json')}, {results.with_suffix('.md')}, {config['plot']} "
          f"in {facts['wall_seconds'] / 60:.1f} min")  # fmt: skip
    return 0


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
