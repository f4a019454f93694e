"""The demo end to end on tiny models (real service child, real pairs, real DPD training), its caching, and
the cleanup guarantee: no service process survives the demo, an exception in a stage, or Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualdistill.demo import DemoHooks, DemoOptions, run_demo
from dualdistill.demo.pipeline import STAGES
from tests.client.demo.helpers import ROOT, gone

STUDENTS = ("student-init", "student-sft", "student-dpd")


def tiny_options(workdir: Path, models: tuple[Path, Path]) -> DemoOptions:
    teacher, student = models
    return DemoOptions(workdir=workdir, teacher_dir=teacher, student_dir=student, progress=False).with_size("tiny")


def test_demo_end_to_end_then_reuse_and_cleanup_after_an_exception(tmp_path, demo_models):
    from safetensors.torch import load_file

    options = tiny_options(tmp_path / "work", demo_models)
    stages, spawned = [], []
    result = run_demo(options, DemoHooks(on_stage=stages.append, on_service=spawned.append))

    assert stages == list(STAGES)
    assert len(spawned) == 2  # teacher only (SFT data), then teacher + reference
    assert all(p.poll() is not None and gone(p.pid) for p in spawned)
    assert list(result.rows) == [*STUDENTS, "teacher"]
    for name in STUDENTS:
        row = result.rows[name]
        assert 0.0 <= row["verifier_acc"] <= 1.0 and 0.0 <= row["pref_acc"] <= 1.0
        assert math.isfinite(row["kl_pos"]) and row["kl_pos"] > 0.0  # tiny random students are not the teacher
    assert result.rows["teacher"]["kl_pos"] == 0.0
    # the evaluation itself: the teacher scored as if it were a student is at KL ~ 0 from its served rows,
    # and its preference accuracy equals the one computed from the served token log-probs
    as_student = result.eval_set.model_metrics(options.teacher_dir)
    assert as_student["kl_pos"] < 1e-4
    assert as_student["pref_acc"] == result.rows["teacher"]["pref_acc"]
    assert as_student["verifier_acc"] == result.rows["teacher"]["verifier_acc"]

    saved = json.loads(result.results_path.read_text())
    assert saved["models"] == json.loads(json.dumps(result.rows)) and saved["size"] == "tiny"
    for key in ("results_png", "train_losses_png", "pair_margins_png", "train_metrics"):
        assert result.artifacts[key].is_file(), key
    train_lines = [json.loads(x) for x in result.artifacts["train_metrics"].read_text().splitlines()]
    assert sum(r["kind"] == "train" for r in train_lines) == options.size.train_steps
    sft_weights = load_file(str(result.run_dir / "student-sft" / "model.safetensors"))
    dpd_weights = load_file(str(result.artifacts["student_dpd"] / "model.safetensors"))
    assert any(not (sft_weights[k] == dpd_weights[k]).all() for k in sft_weights)  # DPD moved the weights

    # Second run on the same workdir: the SFT data and checkpoint are reused (only the main service starts);
    # an exception in the middle of a stage (training) still stops that service.
    sft_file = result.run_dir / "student-sft" / "model.safetensors"
    before = sft_file.stat().st_mtime_ns
    spawned_again: list[subprocess.Popen] = []

    def fail_at_train(stage: str) -> None:
        if stage == "train":
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        run_demo(options, DemoHooks(on_stage=fail_at_train, on_service=spawned_again.append))
    assert len(spawned_again) == 1
    assert spawned_again[0].poll() is not None and gone(spawned_again[0].pid)
    assert sft_file.stat().st_mtime_ns == before


def test_ctrl_c_stops_the_demo_and_its_service(tmp_path, demo_models):
    teacher, student = demo_models
    command = [sys.executable, "-m", "dualdistill.cli.main", "demo", "--size", "tiny", "--teacher", str(teacher),
               "--student", str(student), "--workdir", str(tmp_path / "work"), "--no-progress"]  # fmt: skip
    # SIGINT at its default in the child: a runner started in the background (`cmd &`) ignores SIGINT, the
    # child would inherit that and Python would install no KeyboardInterrupt handler
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    lines: list[str] = []
    server_pid = None
    try:
        deadline = time.monotonic() + 180
        assert process.stdout is not None
        for line in process.stdout:  # the demo prints "service ready: ... (pid N)" once the child serves
            lines.append(line)
            if line.startswith("service ready:"):
                server_pid = int(line.rsplit("(pid ", 1)[1].rstrip(")\n"))
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert server_pid is not None and not gone(server_pid), "".join(lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, "".join(lines) + process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert gone(server_pid)
