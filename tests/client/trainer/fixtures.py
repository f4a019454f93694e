"""Fixtures and helpers shared by the trainer and capture tests.

The teacher is the suite's `tiny_server` (tests/conftest.py: the tiny model served as "tiny"); the
student is a smaller tiny model with the same tokenizer (1 layer, another seed), so the handshake passes;
`mismatched_student_dir` has a tokenizer trained on another corpus, which the handshake must refuse.
Pairs are arithmetic prompts with a right and a wrong answer, tokenized by the shared tokenizer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dualdistill.trainer import TrainConfig

TEACHER = "tiny"
TOP_K = 8


def write_pairs(path: Path, tokenizer, count: int, seed: int, prefix: str) -> Path:
    """`count` pairs in the `dualdistill pairs` format (ids PREFIX-i), responses of varied length."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            prompt = f"What is {a} plus {b}?"
            right = f" The answer is {a + b}." + " Yes." * rng.randint(0, 2)
            wrong = f" It is {a + b + rng.randint(1, 9)}"
            record = {
                "id": f"{prefix}-{i}",
                "prompt": prompt,
                "answer": a + b,
                "prompt_token_ids": tokenizer.encode(prompt),
                "chosen": right,
                "chosen_token_ids": tokenizer.encode(right),
                "rejected": wrong,
                "rejected_token_ids": tokenizer.encode(wrong),
                "scores": {"chosen": 1.0, "rejected": 0.0},
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is far faster than two when other
    processes keep the cores busy (spinning OpenMP workers get descheduled). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory) -> Path:
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("student") / "student", num_layers=1, seed=1)


@pytest.fixture(scope="session")
def mismatched_student_dir(tmp_path_factory) -> Path:
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other") / "other", num_layers=1, seed=1, corpus_variant=1)


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory, student_dir) -> tuple[Path, Path]:
    """(train pairs: 12, eval pairs: 4)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    folder = tmp_path_factory.mktemp("pairs")
    return (
        write_pairs(folder / "train.jsonl", tokenizer, 12, seed=0, prefix="train"),
        write_pairs(folder / "eval.jsonl", tokenizer, 4, seed=1, prefix="eval"),
    )


@pytest.fixture(scope="session")
def capture_dir(tmp_path_factory, tiny_server, pair_files) -> Path:
    """A lossless capture of the train and eval pairs from the served teacher (top_k 8, reference "tiny").

    Training from it is deterministic whatever the server's batching does, which the bit-exact tests need.
    """
    from dualdistill.client import TeacherClient
    from dualdistill.protocol.params import LogitsParams
    from dualdistill.trainer.capture.run import capture_pairs

    out = tmp_path_factory.mktemp("capture") / "capture"
    with TeacherClient(tiny_server.http_url, format="binary-lossless") as client:
        capture_pairs(list(pair_files), client, TEACHER, out, params=LogitsParams(top_k=TOP_K), reference_model=TEACHER, progress=False)
    return out


def small_config(output_dir: Path, student: Path, pairs: Path, teacher_url: str, **overrides) -> TrainConfig:
    """A config sized for tests: batch 2, no progress bar, no plots, lr high enough to move weights."""
    config = TrainConfig(
        student=str(student),
        pairs=str(pairs),
        output_dir=str(output_dir),
        teacher_url=teacher_url,
        teacher_model=TEACHER,
        reference=f"served:{TEACHER}",
        top_k=TOP_K,
        batch_size=2,
        learning_rate=3e-3,
        warmup_steps=1,
        progress=False,
        plots=False,
        teacher_timeout=30.0,
    )
    config.update(overrides)
    return config.validate()


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if atol == 0.0:
            assert torch.equal(wa[name], wb[name]), f"{name} differs (max |d| {(wa[name] - wb[name]).abs().max()})"
        else:
            torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)


def train_records(output_dir: Path) -> list[dict]:
    from dualdistill.trainer.logs import read_metrics

    return [r for r in read_metrics(output_dir) if r["kind"] == "train"]


def torchrun_train(teacher_url: str, pairs: Path, student: Path, out: Path, settings: dict, timeout: float = 280):
    """`dualdistill train` under `torchrun --nproc_per_node 2` (gloo on CPU); the finished process."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dualdistill.cli.main", "train", "--teacher-url", teacher_url,
        "--pairs", str(pairs), "--student", str(student), "--output-dir", str(out),
    ] + [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root / "client"), str(root / "server")])}
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done
