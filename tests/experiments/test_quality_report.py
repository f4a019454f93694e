"""The study's aggregation: the learning-rate pick, the per-method intervals over seeds, the missing runs;
and (slow) the whole study end to end at --size tiny on tiny models and a real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualdistill.study.bootstrap import bootstrap_ci, paired_difference
from experiments.quality.config import study_config
from experiments.quality.report import differences, pick_lrs, summarize
from experiments.quality_table import claim, missing_runs, release

ROOT = Path(__file__).resolve().parents[2]


def record(method, lr, seed, val, correct=None, kl=(1.0, 1.0)):
    r = {"method": method, "lr": lr, "seed": seed, "val": {"val_correct": val}}
    if correct is not None:
        n = len(correct)
        r["test"] = {"correct": correct, "pass@4": correct, "kl_teacher_sum": [kl[0]] * n, "kl_teacher_tokens": [2] * n,
                     "kl_student_sum": [kl[1]] * n, "kl_student_tokens": [1] * n, "kl_own_sum": [kl[1]] * n,
                     "kl_own_tokens": [3] * n, "teacher_logprob_sum": [-1.0] * n,
                     "teacher_logprob_tokens": [1] * n, "pref_correct": correct, "reward_margin": [0.1] * n}  # fmt: skip
    return r


def test_pick_is_the_best_validation_accuracy_ties_to_the_smaller_rate_and_waits_for_the_sweep():
    lrs = (1e-4, 3e-4, 1e-3)
    records = [record("dpd", 1e-4, 0, [0, 1]), record("dpd", 3e-4, 0, [1, 1]), record("dpd", 1e-3, 0, [1, 1]),
               record("dpo", 1e-4, 0, [1, 1]), record("dpo", 3e-4, 0, [1, 1]),
               record("sft", None, 0, [0, 0])]  # fmt: skip
    picked = pick_lrs(records, lrs)
    assert picked == {"dpd": 3e-4, "sft": None}  # dpo's sweep is unfinished: no pick yet


def test_summary_averages_seeds_per_query_then_bootstraps_queries():
    records = [record("dpd", 1e-4, 0, [1], correct=[1, 0, 1, 1], kl=(2.0, 1.0)),
               record("dpd", 1e-4, 1, [1], correct=[0, 0, 1, 1], kl=(4.0, 3.0))]  # fmt: skip
    table = summarize(records, ["dpd"], {"dpd": 1e-4}, pass_k=4, resamples=300)
    row = table["dpd"]
    assert row["seeds"] == [0, 1]
    expected = bootstrap_ci(np.array([0.5, 0.0, 1.0, 1.0]), resamples=300, seed=0)
    assert row["acc"]["value"] == pytest.approx(0.625) and row["acc"]["low"] == pytest.approx(expected.low)
    assert row["kl_teacher_samples"]["value"] == pytest.approx(3.0 / 2)  # (2 + 4) / 2 per query over 2 tokens
    assert row["acc"]["seed_values"] == [0.75, 0.5]


def test_differences_pair_the_same_queries_and_flag_only_intervals_that_exclude_zero():
    records = [record("dpd", 1e-4, 0, [1], correct=[1, 1, 1, 1, 1, 1, 1, 0]),
               record("dpd", 1e-4, 1, [1], correct=[1, 1, 1, 1, 1, 1, 0, 1]),
               record("dpo", 3e-4, 0, [1], correct=[0, 0, 0, 0, 0, 0, 0, 0]),
               record("kd-pos", 1e-4, 0, [1], correct=[1, 1, 1, 1, 1, 1, 1, 1])]  # fmt: skip
    picked = {"dpd": 1e-4, "dpo": 3e-4, "kd-pos": 1e-4}
    diffs = differences(records, ["dpd", "dpo", "kd-pos"], picked, pass_k=4, resamples=300)
    assert set(diffs) == {"dpo", "kd-pos"}
    dpd = np.array([1, 1, 1, 1, 1, 1, 0.5, 0.5])  # seeds averaged per query first
    want = paired_difference(dpd, np.zeros(8), resamples=300, seed=0)
    assert diffs["dpo"]["acc"]["value"] == pytest.approx(0.875) and diffs["dpo"]["acc"]["low"] == pytest.approx(want.low)
    assert diffs["dpo"]["acc"]["separates"] is True  # 0.875 better on every resample
    assert diffs["kd-pos"]["acc"]["separates"] is False  # -0.125: the interval reaches 0
    assert diffs["dpo"]["kl_own_samples"]["value"] == pytest.approx(0.0)


def test_a_run_is_claimed_by_one_live_process_and_a_dead_holder_is_taken_over(tmp_path):
    assert claim(tmp_path, "dpd-lr0.0001-seed0")
    assert claim(tmp_path, "dpd-lr0.0001-seed0")  # ours already
    held = tmp_path / "claims" / "dpo-lr0.0001-seed0.pid"
    held.write_text(str(os.getppid()))  # a live process (our parent) holds it
    assert not claim(tmp_path, "dpo-lr0.0001-seed0")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held.write_text(dead.stdout.strip())  # a finished process: its claim is stale
    assert claim(tmp_path, "dpo-lr0.0001-seed0") and held.read_text() == str(os.getpid())
    release(tmp_path, "dpo-lr0.0001-seed0")
    assert not held.exists()


def test_missing_runs_name_every_unfinished_piece():
    config = study_config("tiny", learning_rates=(1e-3, 1e-2), seeds=(0, 1), methods=("sft", "dpd"))
    records = [record("sft", None, 0, [0], correct=[0]), record("dpd", 1e-3, 0, [1]), record("dpd", 1e-2, 0, [0])]
    picked = pick_lrs(records, config.learning_rates)
    assert missing_runs(config, records, picked) == ["dpd-lr0.001-seed0 (test)", "dpd-lr0.001-seed1 (test)"]
    assert "dpd-lr0.01-seed0 (val)" in missing_runs(config, records[:2], pick_lrs(records[:2], config.learning_rates))


@pytest.mark.slow  # the whole pipeline on tiny models with a real service: minutes on 2 shared cores
@pytest.mark.timeout(1200)  # 2 workers; 3.5 min measured at load 4, more on a busier machine
def test_the_study_runs_end_to_end_at_tiny_size(tmp_path):
    from tests.fixtures.tiny_model import build_tiny_model

    teacher = build_tiny_model(tmp_path / "teacher", num_layers=2, seed=0)
    student = build_tiny_model(tmp_path / "student", num_layers=1, seed=1)
    results = tmp_path / "out" / "quality_table"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT / "server"), str(ROOT)])}
    command = [sys.executable, str(ROOT / "experiments" / "quality_table.py"), "--size", "tiny", "--runs-dir",
               str(tmp_path / "runs"), "--teacher-dir", str(teacher), "--student-dir", str(student),
               "--results", str(results), "--plot", str(tmp_path / "out" / "plot.png"), "--workers", "2"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads(results.with_suffix(".json").read_text())
    assert facts["runs_missing"] == []
    assert set(facts["table"]) == set(study_config("tiny").methods)
    assert all(len(row["seeds"]) == 2 for row in facts["table"].values() if row["lr"] is not None)
    assert (tmp_path / "out" / "plot.png").is_file()
    assert "dpo" in facts["dpd_minus"] and "kl_own_samples" in facts["dpd_minus"]["dpo"]
    assert not list((tmp_path / "runs" / "claims").glob("*.pid"))  # every claim released
