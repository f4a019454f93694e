"""`run_demo(options) -> DemoResult`: the whole DPD story on one machine, stage by stage.

    1 models     teacher (SmolLM2-135M-Instruct, prepared offline) and a layer-pruned student (models.py)
    2 sft-data   service(teacher): teacher samples on the `sft` arithmetic queries          (data.py)
    3 sft        student-init --cross-entropy on those samples--> student-sft               (trainer/sft.py)
    4 pairs      service(teacher + reference=student-sft): teacher positives vs student-SFT negatives,
                 scored by the arithmetic verifier, for the `train` and the held-out `eval` queries
    5 train      DPD (DPO + KD on positives and negatives) from student-sft, teacher rows from the service
    6 evaluate   every model on the held-out set, teacher rows fetched once (evaluate.py)
    7 report     the before/after table, results.json, results.png

Caching (under WORKDIR, per size and seed in WORKDIR/runs/SIZE-seedN): the pruned student, the SFT data,
the SFT checkpoint and the pairs (the pairs files resume by themselves) are reused by the next run; DPD
training and the evaluation are redone every time. `fresh` deletes the run directory and the pruned
student first. A service is started only for the stages that need it, and always stopped (service.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dualdistill.demo.config import DemoOptions
from dualdistill.demo.data import generate_sft_data, query_set, read_sft_data
from dualdistill.demo.evaluate import EvalSet
from dualdistill.demo.models import student_init_directory, teacher_directory
from dualdistill.demo.report import format_table, plot_results, write_results
from dualdistill.demo.service import RunningService, run_service
from dualdistill.protocol.params import LogitsParams

STAGES = ("models", "sft-data", "sft", "pairs", "train", "evaluate", "report")
TEACHER, REFERENCE = "teacher", "reference"  # served names
VERIFIER_SCORER = "verifier:dualdistill.tasks.arithmetic:verify"
GENERATE_TIMEOUT = 900.0  # seconds per generate request: CPU generation of a few dozen rows is slow


@dataclass
class DemoHooks:
    """Test hooks: on_stage(name) as each stage starts; on_service(process) when a service child spawns."""

    on_stage: Callable[[str], None] | None = None
    on_service: Callable[[subprocess.Popen], None] | None = None


@dataclass
class DemoResult:
    run_dir: Path
    rows: dict[str, dict]  # model -> metrics (evaluate.METRICS)
    results_path: Path
    artifacts: dict[str, Path]  # name -> PNG / JSONL / directory
    eval_set: EvalSet | None = None  # the held-out set with the teacher's rows (to evaluate more models)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


class _Stages:
    def __init__(self, hooks: DemoHooks) -> None:
        self.hooks = hooks
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, title: str) -> Iterator[None]:
        print(f"\n=== [{STAGES.index(name) + 1}/{len(STAGES)}] {title}", flush=True)
        if self.hooks.on_stage is not None:
            self.hooks.on_stage(name)
        began = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - began
        print(f"    ({name}: {self.seconds[name]:.1f} s)", flush=True)


def _service(options: DemoOptions, models: dict[str, Path], name: str, hooks: DemoHooks):
    log_path = options.run_dir / "logs" / f"{name}.log"
    print(f"starting the teacher service ({', '.join(f'{k}={v}' for k, v in models.items())}); log: {log_path}",
          flush=True)  # fmt: skip
    return run_service(models, log_path=log_path, extra_args=["--log-level", "warning"], threads=options.threads,
                       on_start=hooks.on_service)  # fmt: skip


def _announce(service: RunningService) -> None:
    print(f"service ready: http={service.http_address} grpc={service.grpc_target} (pid {service.pid})", flush=True)


def run_demo(options: DemoOptions, hooks: DemoHooks | None = None) -> DemoResult:
    """Run every stage of the module docstring; see docs/demo.md."""
    import torch

    hooks = hooks or DemoHooks()
    began = time.perf_counter()
    torch.set_num_threads(options.threads)
    if not options.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load
    size, run_dir = options.size, options.run_dir
    if options.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = _Stages(hooks)
    print(f"dualdistill demo: size {size.name}, seed {options.seed}, run directory {run_dir}", flush=True)

    with stage("models", "teacher and student models"):
        teacher_dir = teacher_directory(options)
        student_init = student_init_directory(options, teacher_dir)
        print(f"teacher: {teacher_dir}\nstudent-init: {student_init}", flush=True)

    from dualdistill.trainer.sft import is_complete as sft_complete

    sft_dir, sft_data_path = run_dir / "student-sft", run_dir / "sft-data.jsonl"
    with stage("sft-data", f"SFT data: teacher samples on {size.sft_queries} arithmetic queries"):
        if sft_complete(sft_dir) or sft_data_path.is_file():
            print(f"reusing {sft_data_path if sft_data_path.is_file() else sft_dir}", flush=True)
        else:
            _sft_data(options, teacher_dir, sft_data_path, hooks)

    with stage("sft", f"SFT: {size.sft_steps} steps of response cross-entropy on the teacher's samples"):
        if sft_complete(sft_dir):
            print(f"reusing the SFT checkpoint {sft_dir}", flush=True)
        else:
            _run_sft(options, student_init, sft_data_path, sft_dir)

    pairs_dir, dpd_dir = run_dir / "pairs", run_dir / "dpd"
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(_service(options, {TEACHER: teacher_dir, REFERENCE: sft_dir}, "service-main", hooks))
        _announce(service)
        with stage("pairs", "pairs: teacher positives vs student-SFT negatives, arithmetic verifier"):
            summaries = {role: _pairs(service, options, role, pairs_dir / f"{role}.jsonl") for role in ("train", "eval")}
        with stage("train", f"DPD training: {size.train_steps} steps, loss preset {size.loss_preset!r}"):
            trained = _train(service, options, sft_dir, pairs_dir / "train.jsonl", dpd_dir)
        with stage("evaluate", f"evaluation on {size.eval_queries} held-out queries"):
            eval_set = _collect_eval_set(service, options, pairs_dir / "eval.jsonl")
            stack.close()  # the service is not needed any more: the students are evaluated in this process
            rows = {}
            for name, directory in (("student-init", student_init), ("student-sft", sft_dir), ("student-dpd", trained)):
                print(f"evaluating {name} ...", flush=True)
                rows[name] = eval_set.model_metrics(directory)
            rows["teacher"] = eval_set.teacher_metrics()

    with stage("report", "results"):
        artifacts = {
            "results_png": plot_results(run_dir / "results.png", rows),
            "train_losses_png": dpd_dir / "plots" / "losses.png",
            "train_metrics": dpd_dir / "metrics.jsonl",
            "pair_margins_png": pairs_dir / "train.margins.png",
            "pairs_summary": pairs_dir / "train.summary.json",
            "student_dpd": trained,
        }
        label = None if options.teacher_dir is None else f"teacher ({teacher_dir.name})"
        table = format_table(rows, teacher_label=label)
        results_path = run_dir / "results.json"
        wall = time.perf_counter() - began
        write_results(results_path, {
            "size": size.name, "seed": options.seed, "size_settings": size.__dict__, "threads": options.threads,
            "teacher": str(teacher_dir), "student_init": str(student_init), "held_out_queries": len(eval_set.queries),
            "held_out_pairs": len(eval_set.pairs), "pairs": summaries, "models": rows,
            "stage_seconds": stage.seconds, "wall_seconds": wall,
            "artifacts": {k: str(v) for k, v in artifacts.items()},
        })  # fmt: skip
        print(f"\nheld-out: {len(eval_set.queries)} queries (verifier acc), {len(eval_set.pairs)} pairs (KL, pref acc)")
        print(table)
        print("\nwhere things are:")
        for key, path in (("results", results_path), *artifacts.items()):
            print(f"  {key:18s} {path}")
        print(f"\ntotal wall time {wall / 60:.1f} min", flush=True)
    return DemoResult(run_dir, rows, results_path, artifacts, eval_set, stage.seconds, time.perf_counter() - began)


def _sft_data(options: DemoOptions, teacher_dir: Path, out: Path, hooks: DemoHooks) -> None:
    from dualdistill.client import TeacherClient

    with _service(options, {TEACHER: teacher_dir}, "service-sft-data", hooks) as service:
        _announce(service)
        with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT) as client:
            examples = generate_sft_data(partial(client.generate, TEACHER), options.size, options.seed, out,
                                         progress=options.progress)  # fmt: skip
    print(f"{len(examples)} teacher samples -> {out}", flush=True)


def _run_sft(options: DemoOptions, student_init: Path, data_path: Path, out: Path) -> None:
    from dualdistill.trainer.sft import sft

    # The pairs' negatives were sampled from the previous SFT student: they go with it.
    shutil.rmtree(options.run_dir / "pairs", ignore_errors=True)
    size = options.size
    result = sft(student_init, read_sft_data(data_path), out, steps=size.sft_steps, lr=size.sft_lr,
                 seed=options.seed, batch_size=size.sft_batch_size, progress=options.progress)  # fmt: skip
    print(f"SFT loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} in {result.wall_seconds:.0f} s -> {out}",
          flush=True)  # fmt: skip


def _pairs(service: RunningService, options: DemoOptions, role: str, out: Path) -> dict:
    from dualdistill.pairs import PairsConfig, run_pairs

    size = options.size
    out.parent.mkdir(parents=True, exist_ok=True)
    # margin 0 with a 0/1 verifier: a pair is dropped only when every teacher sample is wrong and a student
    # sample is right; best-worst picks a right teacher sample whenever there is one (docs/demo.md).
    config = PairsConfig(
        teacher_model=TEACHER, student_model=REFERENCE, samples=size.pair_samples, scorer=VERIFIER_SCORER,
        margin=0.0, pick="best-worst", concurrency=2, seed=options.seed, max_new_tokens=size.max_new_tokens,
        temperature=size.pair_temperature,
    )  # fmt: skip
    result = run_pairs(query_set(role, size, options.seed), out, config, url=service.http_url,
                       timeout=GENERATE_TIMEOUT, progress=options.progress)  # fmt: skip
    summary = result.summary
    chosen = summary["scores"]["chosen"]
    right = 0 if not chosen["count"] else round(chosen["mean"] * chosen["count"])
    print(f"{role}: kept {summary['kept']} of {summary['total']} queries ({right} with a verified-right "
          f"positive); dropped by reason {summary['dropped_by_reason']} -> {out}", flush=True)  # fmt: skip
    return {k: summary[k] for k in ("kept", "dropped", "total", "dropped_by_reason")} | {"right_positives": right}


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0


def _train(service: RunningService, options: DemoOptions, sft_dir: Path, pairs: Path, out: Path) -> Path:
    from dualdistill.trainer import TrainConfig, train

    size = options.size
    n_pairs = _count_lines(pairs)
    if n_pairs == 0:
        raise RuntimeError(f"the pair filter kept no training pair; see {pairs.with_suffix('')}.summary.json")
    shutil.rmtree(out, ignore_errors=True)  # DPD is always retrained from the SFT checkpoint
    config = TrainConfig(
        student=str(sft_dir), pairs=str(pairs), output_dir=str(out), teacher_url=service.http_url,
        teacher_model=TEACHER, reference=f"served:{REFERENCE}", loss_preset=size.loss_preset,
        max_steps=size.train_steps, epochs=max(1, math.ceil(size.train_steps * size.train_batch_size / n_pairs)),
        batch_size=size.train_batch_size, learning_rate=size.train_lr, warmup_steps=1, top_k=size.top_k,
        seed=options.seed, device="cpu", verifier="none", progress=options.progress, plots=True,
        keep_checkpoints=1, teacher_timeout=300.0,
    )  # fmt: skip
    out.mkdir(parents=True)
    # The trainer prints its whole resolved config; it is also in OUT/train_config.json, so the demo's
    # terminal keeps only the progress bar (stderr) and the summary line below.
    with open(out / "train_stdout.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        result = train(config)
    if result.model_dir is None:
        raise RuntimeError(f"DPD training wrote no checkpoint into {out}")
    last = {k: round(v, 4) for k, v in result.train_metrics.items() if k in ("loss", "dpo", "pos", "neg")}
    print(f"DPD: {result.final_step} steps in {result.wall_seconds:.0f} s (waited {result.teacher_wait_seconds:.0f} s "
          f"for the teacher); last step {json.dumps(last)} -> {result.model_dir}", flush=True)  # fmt: skip
    return Path(result.model_dir)


def _collect_eval_set(service: RunningService, options: DemoOptions, eval_pairs: Path) -> EvalSet:
    from dualdistill.client import TeacherClient
    from dualdistill.trainer.teacher import LiveTeacher

    size = options.size
    # lossless rows: the evaluation's KL should not carry the compact codec's rounding
    with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT, format="binary-lossless") as client:
        live = LiveTeacher(client, TEACHER, params=LogitsParams(top_k=size.top_k))
        print("fetching the teacher's rows of the held-out pairs and its greedy answers ...", flush=True)
        return EvalSet.collect(live.fetch, partial(client.generate, TEACHER), query_set("eval", size, options.seed),
                               eval_pairs, size.max_new_tokens)  # fmt: skip
