"""metrics.jsonl: resume keeps one record per step, a line cut by a killed process is ignored, and
TensorBoard is optional (without the package the run still logs to the JSONL)."""

from __future__ import annotations

import importlib.util
import json

from dualdistill.trainer.logs import MetricsLog, read_metrics
from dualdistill.trainer.plots import write_plots


def test_resume_drops_steps_after_the_checkpoint_and_cut_lines(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, tensorboard=False, resume_step=None)
    log.write({"kind": "run", "event": "start", "step": 0})
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": float(step), "dpo": 0.5, "pos": 1.0, "neg": 2.0})
    log.write({"kind": "eval", "step": 3, "eval/kl_pos": 0.1, "eval/pref_acc": float("nan")})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 4, "lo')  # the process died mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 3]
    assert read_metrics(tmp_path)[-1]["eval/pref_acc"] is None  # non-finite -> null: strict JSON
    MetricsLog(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("run", 0), ("train", 1), ("train", 2)]
    assert all(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())


def test_tensorboard_is_optional_and_plots_are_written(tmp_path, capsys):
    log = MetricsLog(tmp_path, enabled=True, tensorboard=True, resume_step=None)
    for step in (1, 2):
        log.write({"kind": "train", "step": step, "loss": 3.0 - step, "dpo": 0.6, "pos": 1.0, "neg": 1.4})
    log.write({"kind": "eval", "step": 2, "eval/kl_pos": 0.3, "eval/pref_acc": 0.5})
    log.close()
    if importlib.util.find_spec("tensorboard") is None:
        assert "tensorboard is not installed" in capsys.readouterr().err
    else:
        assert any((tmp_path / "tensorboard").iterdir())
    assert len(read_metrics(tmp_path)) == 3
    written = write_plots(tmp_path)
    assert [p.name for p in written] == ["losses.png", "eval.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
