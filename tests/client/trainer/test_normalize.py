"""The step's update does not depend on how the step is split: 1 x 4 pairs, 2 x 2 with gradient
accumulation and 2 CPU ranks (gloo) x 2 give the same weights (token terms normalised by the step's
response tokens, `trainer.normalize`).

AdamW with eps far above |g| makes the first update lr * g / (|g| + eps) ~= g (lr = eps): the weight
change IS the gradient, so a different weighting of the micro-batches shows up (plain Adam's first step
is ~lr * sign(g) and would hide it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dualdistill.trainer import train
from dualdistill.trainer.data import Geometry, iterate_micro_batches, load_pairs
from tests.client.trainer.fixtures import load_weights, small_config, torchrun_train

LINEAR = {"learning_rate": 1e6, "adam_eps": 1e6, "warmup_steps": 0, "max_grad_norm": 0.0, "weight_decay": 0.0,
          "max_steps": 1, "epochs": 1, "loss_preset": "dpd"}  # fmt: skip


def four_pairs(pair_files, tmp_path: Path) -> Path:
    """4 consecutive training pairs whose 2 x 2 split puts unequal chosen response tokens in its two
    micro-batches (weighting them by pairs instead of tokens would give another update)."""
    lines = pair_files[0].read_text().splitlines()
    micros = list(iterate_micro_batches(4, Geometry(2, 1, 2), 0, seed=0, epochs=1))
    out = tmp_path / "four.jsonl"
    for begin in range(len(lines) - 3):
        out.write_text("\n".join(lines[begin : begin + 4]) + "\n")
        examples = load_pairs(out, max_seq_len=1 << 20)
        chosen = [sum(len(examples[i].chosen_ids) for i in mb.indices) for mb in micros]
        if chosen[0] != chosen[1]:
            return out
    raise AssertionError("no 4 consecutive pairs with unequal micro-batch token counts in the fixture")


def delta(model_dir: Path, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v - init[k] for k, v in load_weights(model_dir).items()}


def single_process_runs(tmp_path, student_dir, pairs, url) -> dict[str, Path]:
    runs = {}
    for name, geometry in {"1x4": {"batch_size": 4}, "2x2": {"batch_size": 2, "grad_accum_steps": 2}}.items():
        config = small_config(tmp_path / name, student_dir, pairs, url, **LINEAR, **geometry)
        runs[name] = Path(train(config).model_dir)
    return runs


def assert_same_updates(runs: dict[str, Path], init: dict[str, torch.Tensor]) -> None:
    reference = delta(runs["1x4"], init)
    assert max(d.abs().max().item() for d in reference.values()) > 1e-3  # the step moved the weights
    for name in runs:
        for key, value in delta(runs[name], init).items():
            torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def logged_step(run_dir: Path) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return next(r for r in lines if r.get("kind") == "train")


def test_accumulation_gives_the_same_update(tmp_path, student_dir, pair_files, capture_dir):
    pairs = four_pairs(pair_files, tmp_path)
    runs = single_process_runs(tmp_path, student_dir, pairs, f"capture:{capture_dir}")
    assert_same_updates(runs, load_weights(student_dir))
    # the logged step loss is the optimised L_step, whatever the split (its KD terms token means)
    one, two = logged_step(tmp_path / "1x4"), logged_step(tmp_path / "2x2")
    for key in ("loss", "dpo", "pos", "neg"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert one["loss"] == pytest.approx(one["dpo"] + one["pos"] + one["neg"], rel=1e-5)  # dpd: weights 1


@pytest.mark.slow  # torchrun with 2 gloo ranks: about a minute on 2 shared cores
def test_two_ranks_give_the_same_update_as_one(tmp_path, student_dir, pair_files, capture_dir):
    pairs = four_pairs(pair_files, tmp_path)
    url = f"capture:{capture_dir}"
    runs = single_process_runs(tmp_path, student_dir, pairs, url)
    out = tmp_path / "ranks"
    settings = {**LINEAR, "teacher_model": "tiny", "reference": "served:tiny", "top_k": 8, "batch_size": 2,
                "device": "cpu", "progress": "false", "plots": "false"}  # fmt: skip
    torchrun_train(url, pairs, student_dir, out, settings)
    runs["2 ranks x 2"] = out / "checkpoints" / "step-000001"
    assert json.loads((runs["2 ranks x 2"] / "trainer_state.json").read_text())["step"] == 1
    assert_same_updates(runs, load_weights(student_dir))


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_step_share_sums_to_the_step_loss(reduction):
    """Unit check against a plain sum: the shares of two micro-batches add up to the whole step's loss."""
    from dualdistill.losses import DPDLossConfig, DPDLossOutput
    from dualdistill.trainer.normalize import StepCounts, step_share

    config = DPDLossConfig(kd_reduction=reduction)
    # per-token KD values and per-pair DPO losses of a 3-pair step split 1 + 2
    pos = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0]), torch.tensor([5.0, 6.0])]
    neg = [torch.tensor([0.5]), torch.tensor([1.5, 2.5]), torch.tensor([3.5, 4.5, 5.5, 6.5])]
    dpo = torch.tensor([0.7, 0.2, 0.4])

    def side_mean(parts):
        if reduction == "token":
            return torch.cat(parts).mean()
        return torch.stack([p.mean() for p in parts]).mean()

    def output(rows):
        metrics = {"kd_pos/tokens": torch.tensor(sum(len(pos[i]) for i in rows)),
                   "kd_neg/tokens": torch.tensor(sum(len(neg[i]) for i in rows))}  # fmt: skip
        p, n, d = side_mean([pos[i] for i in rows]), side_mean([neg[i] for i in rows]), dpo[rows].mean()
        return DPDLossOutput(d + p + n, d, p, n, metrics)

    counts = StepCounts(pairs=3, chosen_tokens=6, rejected_tokens=7)
    split = step_share(output([0]), config, 1, counts, 1) + step_share(output([1, 2]), config, 2, counts, 1)
    whole = step_share(output([0, 1, 2]), config, 3, counts, 1)
    expected = dpo.mean() + side_mean(pos) + side_mean(neg)
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(split, expected)
