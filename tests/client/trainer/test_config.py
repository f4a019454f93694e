"""TrainConfig: file loading, CLI flags and --set overrides in their precedence, validation messages
that name the field, and docs/training.md's table generated from the field metadata."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from dualdistill.cli.main import build_parser, main
from dualdistill.cli.train import resolve_config
from dualdistill.trainer import TrainConfig
from dualdistill.trainer.config import parse_reference
from dualdistill.trainer.doctable import render

ROOT = Path(__file__).resolve().parents[3]
REQUIRED = {"student": "s", "pairs": "p.jsonl", "teacher_url": "http://t:8000"}


def test_every_field_is_documented_with_help():
    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_yaml_and_json_files_load_and_coerce(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "student: s\npairs: p.jsonl\nteacher_url: capture:/data/cap\nlearning_rate: 1e-5\n"
        "max_steps: 7\nloss: {beta: 0.2, neg_weight: 0.5}\nbf16: true\n"
    )
    config = TrainConfig.from_file(tmp_path / "c.yaml").validate()
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)  # YAML reads 1e-5 as a str
    assert config.loss == {"beta": 0.2, "neg_weight": 0.5} and config.bf16 and config.max_steps == 7
    assert config.capture_dir == "/data/cap"
    (tmp_path / "c.json").write_text(json.dumps({**REQUIRED, "batch_size": 3}))
    assert TrainConfig.from_file(tmp_path / "c.json").batch_size == 3


def test_cli_precedence_file_then_flags_then_set(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("student: from-file\npairs: p.jsonl\nteacher_url: http://a:1\nbatch_size: 3\n")
    args = build_parser().parse_args([
        "train", "--config", str(tmp_path / "c.yaml"), "--student", "from-flag", "--output-dir", "out",
        "--resume", "--set", "batch_size=5", "--set", "loss.beta=0.3", "--set", "max_steps=null",
        "--set", "teacher_url=grpc://b:2",
    ])  # fmt: skip
    config = resolve_config(args)
    assert (config.student, config.output_dir, config.resume) == ("from-flag", "out", True)
    assert (config.batch_size, config.loss, config.max_steps) == (5, {"beta": 0.3}, None)
    assert config.teacher_url == "grpc://b:2"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 0}, "batch_size=0 must be >= 1"),
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio=1.5 must be <= 1"),
        ({"teacher_mode": "greedy"}, "teacher_mode='greedy' is not supported; choose one of 'topk', 'sample'"),
        ({"teacher_url": "ftp://x"}, "teacher_url='ftp://x' must start with"),
        ({"reference": "served:"}, "reference='served:' must be one of"),
        ({"reference": "remote:x"}, "reference='remote:x' must be one of"),
        ({"verifier": "nope"}, "verifier='nope' must be auto, none or MODULE:FUNCTION"),
        ({"learning_rate": float("nan")}, "learning_rate=nan must be finite"),
        ({"pairs": ""}, "pairs is required"),
    ],
)
def test_validation_names_the_field(override, message):
    config = TrainConfig.from_dict({**REQUIRED, **override})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        config.validate()


def test_bad_keys_and_types_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="unknown config field 'learning_rat'; did you mean 'learning_rate'"):
        TrainConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ValueError, match="batch_size must be int"):
        TrainConfig.from_dict({"batch_size": "four"})
    with pytest.raises(ValueError, match="epochs must not be null"):
        TrainConfig.from_dict({"epochs": None})
    with pytest.raises(ValueError, match="--set expects key=value"):
        TrainConfig().apply_override("batch_size")
    assert main(["train", "--set", "batch_size=0", "--student", "s", "--pairs", "p", "--teacher-url", "http://t"]) == 2


def test_references_parse():
    assert parse_reference("served:sft") == ("served", "sft")
    assert parse_reference("local:/m/sft") == ("local", "/m/sft")
    assert parse_reference("column") == ("column", "")


def test_docs_table_matches_the_dataclass():
    path = ROOT / "docs" / "training.md"
    text = path.read_text(encoding="utf-8")
    assert render(text) == text, "docs/training.md is stale: run python -m dualdistill.trainer.doctable docs/training.md"
