"""Resume is bit for bit: a run stopped after a checkpoint and resumed ends with exactly the weights,
losses and data order of an uninterrupted run (CPU).

The teacher rows come from a lossless capture of the served tiny teacher: a live server's values may
differ in the last bits with the composition of its batches (which concurrent requests share a forward
pass), and that is the server's business, not the resume logic's under test here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualdistill.trainer import train
from dualdistill.trainer.checkpoint import list_checkpoints
from tests.client.trainer.fixtures import TEACHER, TOP_K, assert_same_weights, small_config, train_records

ROOT = Path(__file__).resolve().parents[3]


class Crash(RuntimeError):
    """Stands for the process dying: nothing of the first run's memory reaches the resumed one."""


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, capture_dir, student_dir, pair_files):
    train_pairs, eval_pairs = pair_files
    common = dict(save_every=2, keep_checkpoints=0, grad_accum_steps=2, epochs=2, max_steps=5,
                  eval_pairs=str(eval_pairs), eval_every=3, eval_max_new_tokens=4)  # fmt: skip

    def config(name, **extra):
        return small_config(tmp_path / name, student_dir, train_pairs, f"capture:{capture_dir}", **common, **extra)

    whole = train(config("whole"))
    assert whole.final_step == 5  # 12 pairs / (2 x 2 accum) = 3 steps per epoch; stops inside epoch 2

    def crash_after_step_3(step, record):
        if step == 3:  # checkpoint 2 is the newest on disk; step 3 is lost with the process
            raise Crash()

    with pytest.raises(Crash):
        train(config("killed"), on_step=crash_after_step_3)
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step-000002"]
    resumed = train(config("killed", resume=True))
    assert resumed.final_step == 5

    assert_same_weights(whole.model_dir, resumed.model_dir)
    a, b = train_records(tmp_path / "whole"), train_records(tmp_path / "killed")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]  # the lost step 3 was redone, not logged twice
    for key in ("example_ids", "loss", "dpo", "pos", "neg", "lr", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_bit_for_bit(tmp_path, capture_dir, student_dir, pair_files):
    """The same, with a real `dualdistill train` process killed by SIGKILL at a random moment."""
    settings = {"teacher_model": TEACHER, "reference": f"served:{TEACHER}", "top_k": TOP_K, "batch_size": 2,
                "learning_rate": 3e-3, "epochs": 10, "save_every": 1, "keep_checkpoints": 0,
                "progress": "false", "plots": "false", "device": "cpu"}  # fmt: skip

    def command(out, *extra):
        return [sys.executable, "-m", "dualdistill.cli.main", "train", "--teacher-url", f"capture:{capture_dir}",
                "--pairs", str(pair_files[0]), "--student", str(student_dir), "--output-dir", str(out), *extra,
                ] + [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]  # fmt: skip

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT / "server")])}
    whole = subprocess.run(command(tmp_path / "whole"), env=env, cwd=ROOT, capture_output=True, timeout=280)
    assert whole.returncode == 0, whole.stderr[-3000:]
    victim = subprocess.Popen(command(tmp_path / "killed"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list_checkpoints(tmp_path / "killed")) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = len(list_checkpoints(tmp_path / "killed"))
    assert 5 <= killed_at < 60, "the run must die mid-way for this test to mean anything"
    resumed = subprocess.run(command(tmp_path / "killed", "--resume"), env=env, cwd=ROOT, capture_output=True,
                             timeout=280)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "whole" / "checkpoints" / "step-000060", tmp_path / "killed" / "checkpoints" / "step-000060")
    a, b = train_records(tmp_path / "whole"), train_records(tmp_path / "killed")
    assert [(r["step"], r["loss"], r["example_ids"]) for r in a] == [(r["step"], r["loss"], r["example_ids"]) for r in b]
