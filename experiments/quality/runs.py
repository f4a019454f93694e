"""One run of the study: train (method, learning rate, seed) from the capture, then measure it.

    train_run     `dualdistill.trainer.train` from student-sft, teacher rows from the capture
    measure_val   greedy verifier accuracy per val query (the learning-rate pick)
    measure_test  per test query / pair: greedy accuracy, pass@k, KL on teacher and student samples, the
                  teacher's per-token log-prob of the fresh greedy answers, preference and reward margin

Each result is one JSON file (per-query arrays included), written when the run is done: the study resumes
by skipping the files that exist.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.quality.config import METHODS, StudyConfig
from experiments.quality.data import REFERENCE, TEACHER, StudyData


def run_name(method: str, lr: float | None, seed: int) -> str:
    return f"{method}-seed{seed}" if lr is None else f"{method}-lr{lr:g}-seed{seed}"


def save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def train_run(config: StudyConfig, data: StudyData, method: str, lr: float, seed: int, out: Path) -> Path:
    """The trained model's directory (a finished run in `out` is reused)."""
    from dualdistill.trainer import TrainConfig, train
    from dualdistill.trainer.checkpoint import latest_checkpoint

    done = out / "DONE"
    if done.is_file():
        return Path(done.read_text().strip())
    shutil.rmtree(out, ignore_errors=True)
    preset, overrides = METHODS[method]
    n_pairs = sum(1 for line in data.train_pairs.open() if line.strip())
    train_config = TrainConfig(
        student=str(data.sft_dir), pairs=str(data.train_pairs), output_dir=str(out),
        teacher_url=f"capture:{data.capture_dir}", teacher_model=TEACHER, reference=f"served:{REFERENCE}",
        loss_preset=preset, loss=dict(overrides), max_steps=config.steps,
        epochs=max(1, math.ceil(config.steps * config.batch_size / n_pairs)), batch_size=config.batch_size,
        learning_rate=lr, warmup_steps=config.warmup_steps, top_k=config.top_k, seed=seed, device=config.device,
        verifier="none", progress=False, plots=False, keep_checkpoints=1,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    # the trainer prints its resolved config (also in OUT/train_config.json): kept out of the study's log
    with open(out / "train_stdout.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        result = train(train_config)
    model_dir = latest_checkpoint(out) if result.model_dir is None else Path(result.model_dir)
    done.write_text(str(model_dir) + "\n")
    return Path(model_dir)


def _load(model_dir: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    return model, tokenizer, pad


def measure_val(config: StudyConfig, data: StudyData, model_dir: Path) -> dict[str, Any]:
    from dualdistill.study.measure import answers
    from dualdistill.tasks.registry import verifier

    model, tokenizer, pad = _load(model_dir, config.device)
    val = data.prompts["val"]
    found = answers(model, tokenizer, val["prompt_ids"], max_new_tokens=config.max_new_tokens, samples=0,
                    temperature=1.0, seed=0, pad_id=pad)  # fmt: skip
    verify = verifier(config.task)
    return {"val_correct": [verify(q, a) for q, a in zip(val["queries"], found.greedy_text, strict=True)]}


def measure_test(config: StudyConfig, data: StudyData, model_dir: Path, client: Any, seed: int) -> dict[str, Any]:
    """Per-query arrays of every test metric (lists, for JSON)."""
    from dualdistill.protocol.params import LogitsParams
    from dualdistill.study.estimators import pass_at_k
    from dualdistill.study.measure import answers, own_sample_kl, pair_scores, sample_kl, teacher_logprob
    from dualdistill.tasks.registry import verifier
    from dualdistill.trainer.data import load_pairs
    from dualdistill.trainer.teacher import CaptureTeacher, LiveTeacher

    model, tokenizer, pad = _load(model_dir, config.device)
    test, verify = data.prompts["test"], verifier(config.task)
    found = answers(model, tokenizer, test["prompt_ids"], max_new_tokens=config.max_new_tokens,
                    samples=config.pass_k, temperature=1.0, seed=1000 * seed, pad_id=pad)  # fmt: skip
    correct = [verify(q, a) for q, a in zip(test["queries"], found.greedy_text, strict=True)]
    right = [sum(verify(q, s) for s in ss) for q, ss in zip(test["queries"], found.sample_text, strict=True)]
    capture = CaptureTeacher(str(data.capture_dir), TEACHER, params=LogitsParams(top_k=config.top_k),
                             reference_model=REFERENCE)  # fmt: skip
    try:
        samples = load_pairs(data.test_samples, max_seq_len=1 << 20)
        pairs = load_pairs(data.test_pairs, max_seq_len=1 << 20)
        kl = sample_kl(model, samples, capture.fetch, pad_id=pad)
        prefs = pair_scores(model, pairs, capture.fetch, beta=0.1, pad_id=pad)
    finally:
        capture.close()

    def score(sequences, starts):
        rows = client.logits(TEACHER, sequences=sequences, starts=starts, top_k=1)
        return [np.asarray(r.token_logprobs, dtype=np.float64) for r in rows]

    judged = teacher_logprob(score, test["prompt_ids"], found.greedy_ids)
    # the model's own region: its fresh samples (the pass@k ones) scored by the live teacher
    live = LiveTeacher(client, TEACHER, params=LogitsParams(top_k=config.top_k))
    own = own_sample_kl(model, test["prompt_ids"], found.sample_ids, live.fetch, pad_id=pad)
    out: dict[str, Any] = {
        "correct": correct,
        f"pass@{config.pass_k}": [pass_at_k(config.pass_k, int(c), config.pass_k) for c in right],
        "answer_tokens": [len(g) for g in found.greedy_ids],
        "examples": found.greedy_text[:5],
    }
    out.update({k: np.asarray(v).tolist() for k, v in {**kl, **own, **prefs, **judged}.items()})
    return out


def run_one(config: StudyConfig, data: StudyData, runs_dir: Path, method: str, lr: float | None, seed: int,
            *, test: bool, client: Any) -> dict:  # fmt: skip
    """Train if needed, then the val (and, when `test`, the test) measurements; cached as JSON."""
    name = run_name(method, lr, seed)
    path = runs_dir / "results" / f"{name}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is not None and (not test or "test" in record):
        return record
    began = time.perf_counter()
    if METHODS[method] is None:
        model_dir = data.sft_dir
    else:
        model_dir = train_run(config, data, method, lr, seed, runs_dir / "train" / name)
    record = record or {"method": method, "lr": lr, "seed": seed, "model_dir": str(model_dir),
                        "train_seconds": time.perf_counter() - began}  # fmt: skip
    if "val" not in record:
        record["val"] = measure_val(config, data, model_dir)
    if test:
        t0 = time.perf_counter()
        record["test"] = measure_test(config, data, model_dir, client, seed)
        record["test_seconds"] = time.perf_counter() - t0
    save(path, record)
    acc = np.mean(record["val"]["val_correct"])
    extra = f", test acc {np.mean(record['test']['correct']):.3f}" if "test" in record else ""
    print(f"{name}: val acc {acc:.3f}{extra} ({time.perf_counter() - began:.0f} s)", flush=True)
    return record
