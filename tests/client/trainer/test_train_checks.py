"""Checks before step 1 and the three reference sources.

- A student whose tokenizer is not the teacher's is refused before anything is trained or written
  (live service through the CLI: exit status 4; capture directory: TokenizerMismatchError).
- served:NAME, local:DIR and column give the same DPO reference, hence the same training run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dualdistill.cli.main import main
from dualdistill.client import TokenizerMismatchError
from dualdistill.trainer import train
from dualdistill.trainer.data import collate, load_pairs
from dualdistill.trainer.reference import Reference
from tests.client.trainer.fixtures import (
    TEACHER,
    assert_same_weights,
    load_weights,
    small_config,
    train_records,
)


def test_mismatched_tokenizer_is_refused_before_step_1(tmp_path, tiny_server, mismatched_student_dir, pair_files,
                                                       capture_dir):  # fmt: skip
    out = tmp_path / "live"
    status = main([
        "train", "--teacher-url", tiny_server.http_url, "--pairs", str(pair_files[0]),
        "--student", str(mismatched_student_dir), "--output-dir", str(out),
        "--set", f"teacher_model={TEACHER}", "--set", "reference=column", "--set", "progress=false",
    ])  # fmt: skip
    assert status == 4
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    config = small_config(tmp_path / "cap", mismatched_student_dir, pair_files[0], f"capture:{capture_dir}")
    with pytest.raises(TokenizerMismatchError, match="tokenizer sha256 differs"):
        train(config)
    assert not (tmp_path / "cap").exists()


def test_served_local_and_column_references_train_alike(tmp_path, capture_dir, tiny_model_dir, student_dir,
                                                        pair_files):  # fmt: skip
    train_pairs = pair_files[0]
    # column: the local reference's scores written into the pairs file (one pair per forward: no padding)
    local = Reference(f"local:{tiny_model_dir}", torch.device("cpu"), False, None)
    with_columns = tmp_path / "with-columns.jsonl"
    with train_pairs.open() as source, with_columns.open("w") as target:
        for line, example in zip(source, load_pairs(train_pairs, 1024), strict=True):
            chosen, rejected = local.scores(collate([example], 0), None).split(1)
            record = json.loads(line) | {"ref_chosen_logps": float(chosen[0]), "ref_rejected_logps": float(rejected[0])}
            target.write(json.dumps(record) + "\n")
    runs = {}
    for name, reference, pairs in [
        ("served", f"served:{TEACHER}", train_pairs),
        ("local", f"local:{tiny_model_dir}", train_pairs),
        ("column", "column", with_columns),
    ]:
        config = small_config(tmp_path / name, student_dir, pairs, f"capture:{capture_dir}",
                              reference=reference, max_steps=2, loss={"pos_weight": 0.0, "neg_weight": 0.0})  # fmt: skip
        runs[name] = train(config)
    # step 1 runs the same student on the same pairs: the rewards beta * (pi - ref) differ only by the
    # reference, which is the same float32 sum computed by the service, in a padded batch, one by one
    first = {name: train_records(tmp_path / name)[0] for name in runs}
    for key in ("rewards/chosen", "rewards/rejected"):
        values = [first[name][key] for name in runs]
        assert max(values) - min(values) < 1e-5, (key, values)
    assert_same_weights(runs["served"].model_dir, runs["local"].model_dir, atol=1e-5)
    assert_same_weights(runs["local"].model_dir, runs["column"].model_dir, atol=1e-5)


def test_column_reference_values_reach_the_loss(tmp_path, capture_dir, student_dir, pair_files):
    """The control for the test above: shifting every ref_chosen_logps by +1 shifts rewards/chosen by -beta."""
    rewards = []
    for shift in (0.0, 1.0):
        pairs = tmp_path / f"shift{shift}.jsonl"
        with pair_files[0].open() as source, pairs.open("w") as target:
            for line in source:
                record = json.loads(line) | {"ref_chosen_logps": -20.0 + shift, "ref_rejected_logps": -20.0}
                target.write(json.dumps(record) + "\n")
        config = small_config(tmp_path / f"run{shift}", student_dir, pairs, f"capture:{capture_dir}",
                              reference="column", max_steps=1)  # fmt: skip
        rewards.append(train(config).train_metrics["rewards/chosen"])
    assert rewards[1] - rewards[0] == pytest.approx(-0.1, abs=1e-5)  # beta = 0.1 (preset "dpd")


def test_bf16_autocast_on_cpu_trains_in_float32_weights(tmp_path, capture_dir, student_dir, pair_files):
    result = train(small_config(tmp_path / "bf16", student_dir, pair_files[0], f"capture:{capture_dir}",
                                bf16=True, max_steps=2))  # fmt: skip
    records = train_records(tmp_path / "bf16")
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    weights = load_weights(result.model_dir)
    assert {w.dtype for w in weights.values()} == {torch.float32}  # autocast touches activations only


def test_fused_and_unfused_loss_train_alike(tmp_path, capture_dir, student_dir, pair_files):
    """fused_loss (hidden states + LM head, chunked) is the default and trains as the logits path does."""
    from dualdistill.trainer.student import lm_head

    assert small_config(tmp_path / "x", student_dir, pair_files[0], f"capture:{capture_dir}").fused_loss
    runs = {}
    for fused in (True, False):
        config = small_config(tmp_path / f"fused-{fused}", student_dir, pair_files[0], f"capture:{capture_dir}",
                              max_steps=2, fused_loss=fused)  # fmt: skip
        runs[fused] = train(config)
    for key in ("loss", "dpo", "pos", "neg", "grad_norm"):
        assert runs[True].train_metrics[key] == pytest.approx(runs[False].train_metrics[key], rel=1e-4, abs=1e-5)
    # The two paths sum in different orders, so gradients differ by float rounding; AdamW divides each by
    # its running RMS, which turns that into weight differences of up to 1.04e-5 here (it depends on the
    # CPU's vector width). AdamW moves a weight by up to about the learning rate per step (3e-3 here), so a
    # wrong gradient (a missing or misweighted term) shows up a hundred times above this tolerance.
    learning_rate = small_config(tmp_path / "y", student_dir, pair_files[0], f"capture:{capture_dir}").learning_rate
    assert_same_weights(runs[True].model_dir, runs[False].model_dir, atol=1e-2 * learning_rate)
    from transformers import AutoModelForCausalLM

    assert lm_head(AutoModelForCausalLM.from_pretrained(student_dir)) is not None  # the fused path did run


def test_score_gap_margins_reach_the_loss(tmp_path, capture_dir, student_dir, pair_files):
    """Per-pair margins from chosen_score - rejected_score: gaps of 1 scaled by 0.5 train as margin 0.5."""
    pairs = tmp_path / "scored.jsonl"
    with pair_files[0].open() as source, pairs.open("w") as target:
        for line in source:
            target.write(json.dumps(json.loads(line) | {"chosen_score": 1.0, "rejected_score": 0.0}) + "\n")
    losses = []
    for name, loss in (("gap", {"margin_mode": "score-gap", "margin_scale": 0.5}), ("fixed", {"margin": 0.5})):
        config = small_config(tmp_path / name, student_dir, pairs, f"capture:{capture_dir}", max_steps=1, loss=loss)
        losses.append(train(config).train_metrics["dpo"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    unscored = small_config(tmp_path / "unscored", student_dir, pair_files[0], f"capture:{capture_dir}", max_steps=1,
                            loss={"margin_mode": "score-gap"})  # fmt: skip
    with pytest.raises(ValueError, match="no chosen_score / rejected_score"):
        train(unscored)
