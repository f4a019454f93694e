"""dpd_loss = weighted DPO + KD(pos) + KD(neg), checked term by term against the plain references."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch

from dualdistill.losses import IGNORE_INDEX, PRESETS, DPDBatch, DPDLoss, DPDLossConfig, dpd_loss, shift_labels
from dualdistill.teacher_logits import TeacherLogits
from tests.client.losses.loss_reference import (
    coarse_kd_reference,
    dpo_reference,
    make_teacher,
    sequence_logps_reference,
)

VOCAB = 23


def _side(seed: int, length: int, prompt: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    b = 2
    ids = torch.randint(0, VOCAB, (b, length), generator=generator)
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, prompt:] = True
    mask[1, length - 2 :] = False  # the second sequence is shorter (right padding)
    rows = torch.zeros_like(mask)
    rows[:, :-1] = mask[:, 1:]
    # the teacher has rows from the prompt end on (one more than the response on the padded sequence)
    teacher_mask = torch.zeros_like(mask)
    teacher_mask[:, prompt - 1 : length - 1] = True
    teacher = make_teacher(torch.randn(b, length, VOCAB, generator=generator) * 2, k=5, mask=teacher_mask)
    logits = (torch.randn(b, length, VOCAB, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    return {"logits": logits, "ids": ids, "mask": mask, "rows": rows, "teacher": teacher}


def _batch() -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    chosen, rejected = _side(0, length=9, prompt=3), _side(1, length=7, prompt=3)
    ref_chosen = torch.tensor([-30.0, -25.0], dtype=torch.float64)
    ref_rejected = torch.tensor([-20.0, -28.0], dtype=torch.float64)
    return chosen, rejected, ref_chosen, ref_rejected


def _stack(chosen: dict, rejected: dict, ref_c, ref_r, teacher: bool = True) -> tuple[torch.Tensor, DPDBatch]:
    """[chosen; rejected] padded to one length: (2B, L, V) logits and the aligned DPDBatch."""
    length = max(chosen["ids"].shape[1], rejected["ids"].shape[1])
    logits, labels, masks = [], [], []
    for side in (chosen, rejected):
        extra = length - side["ids"].shape[1]
        side_labels, side_mask = shift_labels(side["ids"], side["mask"])
        logits.append(torch.nn.functional.pad(side["logits"], (0, 0, 0, extra)))
        labels.append(torch.nn.functional.pad(side_labels, (0, extra), value=IGNORE_INDEX))
        masks.append(torch.nn.functional.pad(side_mask, (0, extra), value=False))
    rows = TeacherLogits.cat([chosen["teacher"], rejected["teacher"]], length) if teacher else None
    ref = None if ref_c is None else torch.cat([ref_c, ref_r])
    return torch.cat(logits), DPDBatch(torch.cat(labels), torch.cat(masks), rows, ref)


def _call(config: DPDLossConfig, chosen: dict, rejected: dict, ref_c: torch.Tensor, ref_r: torch.Tensor):
    return dpd_loss(*_stack(chosen, rejected, ref_c, ref_r), config)


def _reference(config: DPDLossConfig, chosen: dict, rejected: dict, ref_c: torch.Tensor, ref_r: torch.Tensor):
    pi_c = sequence_logps_reference(chosen["logits"], chosen["ids"], chosen["mask"])
    pi_r = sequence_logps_reference(rejected["logits"], rejected["ids"], rejected["mask"])
    dpo = dpo_reference(
        pi_c, pi_r, ref_c, ref_r, config.beta, config.margin, config.loss_type, config.label_smoothing
    )
    kd = {
        side: coarse_kd_reference(
            data["logits"], data["teacher"], divergence, config.temperature, config.alpha, config.jsd_beta,
            mask=data["rows"], reduction=config.kd_reduction,
        )
        for side, data, divergence in (
            ("pos", chosen, config.pos_divergence), ("neg", rejected, config.neg_divergence)
        )
    }  # fmt: skip
    return config.dpo_weight * dpo + config.pos_weight * kd["pos"] + config.neg_weight * kd["neg"], dpo, kd


CONFIGS = {
    **{name: DPDLossConfig.preset(name) for name in PRESETS},
    "weighted-ipo-jsd": DPDLossConfig(
        dpo_weight=0.5, pos_weight=2.0, neg_weight=0.25, beta=0.2, margin=0.3, loss_type="ipo",
        pos_divergence="jsd", neg_divergence="reverse_kl", jsd_beta=0.3, temperature=1.5, chunk_size=3,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_total_and_terms_match_the_references(name: str) -> None:
    config = CONFIGS[name]
    chosen, rejected, ref_c, ref_r = _batch()
    out = _call(config, chosen, rejected, ref_c, ref_r)
    expected, dpo, kd = _reference(config, chosen, rejected, ref_c, ref_r)
    torch.testing.assert_close(out.loss, expected)
    if config.dpo_weight:
        torch.testing.assert_close(out.dpo, dpo)
    if config.pos_weight:
        torch.testing.assert_close(out.pos, kd["pos"])
    if config.neg_weight:
        torch.testing.assert_close(out.neg, kd["neg"])
    leaves = (chosen["logits"], rejected["logits"])
    got = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    want = torch.autograd.grad(expected, leaves, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        if g is None or w is None:  # a skipped term leaves no graph; the reference multiplies it by 0
            assert not (g if g is not None else w).any()
        else:
            torch.testing.assert_close(g, w)
    assert out.host_metrics()["loss"] == pytest.approx(out.loss.item())


def test_metrics_of_the_full_preset() -> None:
    chosen, rejected, ref_c, ref_r = _batch()
    out = _call(DPDLossConfig.preset("dpd"), chosen, rejected, ref_c, ref_r)
    metrics = out.host_metrics()
    assert set(metrics) == {
        "loss", "dpo/loss", "kd_pos/loss", "kd_neg/loss", "kd_pos/tokens", "kd_neg/tokens", "rewards/chosen",
        "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
    }  # fmt: skip
    # tokens = teacher rows that predict response tokens: (9 - 3) + (9 - 3 - 2) and (7 - 3) + (7 - 3 - 2)
    assert metrics["kd_pos/tokens"] == 10 and metrics["kd_neg/tokens"] == 6
    assert all(isinstance(v, float) for v in metrics.values())


def test_zero_weight_terms_are_skipped_and_need_no_inputs() -> None:
    chosen, rejected, _, _ = _batch()
    # "kd-pos": no reference log-probs are needed
    out = dpd_loss(*_stack(chosen, rejected, None, None), DPDLossConfig.preset("kd-pos"))
    assert set(out.metrics) == {"loss", "kd_pos/loss", "kd_pos/tokens"}
    assert not out.dpo.requires_grad and not out.neg.requires_grad and out.dpo.item() == 0.0
    # "dpo": no teacher rows are needed
    chosen, rejected, ref_c, ref_r = _batch()
    out = dpd_loss(*_stack(chosen, rejected, ref_c, ref_r, teacher=False), DPDLossConfig.preset("dpo"))
    assert "kd_pos/loss" not in out.metrics and out.pos.item() == 0.0 and out.loss.requires_grad


def test_missing_inputs_of_an_active_term_are_named() -> None:
    chosen, rejected, _, _ = _batch()
    with pytest.raises(ValueError, match="dpo_weight > 0 needs ref_logps"):
        dpd_loss(*_stack(chosen, rejected, None, None))
    with pytest.raises(ValueError, match="neg_weight > 0 needs teacher"):
        dpd_loss(
            *_stack(chosen, rejected, None, None, teacher=False),
            DPDLossConfig(dpo_weight=0.0, pos_weight=0.0),
        )


def test_all_masked_batch_gives_finite_loss_and_gradients() -> None:
    chosen, rejected, ref_c, ref_r = _batch()
    for side in (chosen, rejected):
        side["mask"] = torch.zeros_like(side["mask"])
    out = _call(DPDLossConfig.preset("dpd"), chosen, rejected, ref_c, ref_r)
    assert out.pos.item() == 0.0 and out.neg.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(chosen["logits"].grad).all() and not chosen["logits"].grad.any()


def test_presets_are_what_their_names_say() -> None:
    dpd = DPDLossConfig.preset("dpd")
    assert (dpd.dpo_weight, dpd.pos_weight, dpd.neg_weight, dpd.beta, dpd.loss_type) == (
        1,
        1,
        1,
        0.1,
        "sigmoid",
    )
    assert dpd.pos_divergence == dpd.neg_divergence == "forward_kl"
    d2 = DPDLossConfig.preset("distillm2")
    assert d2.dpo_weight == 0 and (d2.pos_divergence, d2.neg_divergence, d2.alpha) == (
        "skew_forward_kl", "skew_reverse_kl", 0.1,
    )  # fmt: skip
    assert DPDLossConfig.preset("dpd", beta=0.05).beta == 0.05
    assert DPDLossConfig.preset("dpd") is not DPDLossConfig.preset("dpd")  # presets are copies


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pos_weight": -1.0}, "pos_weight"),
        ({"dpo_weight": 0.0, "pos_weight": 0.0, "neg_weight": 0.0}, "at least one term"),
        ({"neg_divergence": "tvd"}, "neg_divergence='tvd' is not supported; choose one of 'forward_kl'"),
        ({"loss_type": "kto"}, "'sigmoid', 'ipo', 'hinge'"),
        ({"alpha": 1.0}, "alpha"),
        ({"jsd_beta": 1.5}, "jsd_beta"),
        ({"temperature": -1.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"beta": float("nan")}, "beta"),
        ({"margin_mode": "gap"}, "margin_mode='gap' is not supported; choose one of 'fixed', 'score-gap'"),
        ({"margin_scale": -1.0}, "margin_scale"),
        ({"kd_reduction": "batch"}, "kd_reduction='batch' is not supported; choose one of 'token', 'sequence'"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPDLossConfig(**kwargs)


def test_preset_errors_and_documented_fields() -> None:
    with pytest.raises(ValueError, match="'dpd', 'distillm2', 'kd-pos', 'dpo'"):
        DPDLossConfig.preset("orpo")
    with pytest.raises(ValueError, match="unknown DPDLossConfig fields"):
        DPDLossConfig.preset("dpd", betta=0.2)
    assert all(f.metadata.get("help") for f in fields(DPDLossConfig))


def test_module_wrapper_matches_function() -> None:
    chosen, rejected, ref_c, ref_r = _batch()
    config = DPDLossConfig.preset("distillm2")
    module = DPDLoss(config)
    got = module(*_stack(chosen, rejected, ref_c, ref_r))
    torch.testing.assert_close(got.loss, _call(config, chosen, rejected, ref_c, ref_r).loss)
    assert DPDLoss().config == DPDLossConfig.preset("dpd")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_score_gap_margins_match_the_reference(loss_type: str) -> None:
    chosen, rejected, ref_c, ref_r = _batch()
    gaps = torch.tensor([1.0, 0.25], dtype=torch.float64)
    config = DPDLossConfig(margin=0.1, margin_mode="score-gap", margin_scale=0.5, loss_type=loss_type)
    logits, batch = _stack(chosen, rejected, ref_c, ref_r)
    batch.score_gaps = gaps
    out = dpd_loss(logits, batch, config)
    # reference: each pair's own margin 0.1 + 0.5 * gap, pair by pair
    pi_c = sequence_logps_reference(chosen["logits"], chosen["ids"], chosen["mask"])
    pi_r = sequence_logps_reference(rejected["logits"], rejected["ids"], rejected["mask"])
    dpo = torch.stack(
        [
            dpo_reference(pi_c[i : i + 1], pi_r[i : i + 1], ref_c[i : i + 1], ref_r[i : i + 1], config.beta,
                          0.1 + 0.5 * float(gaps[i]), loss_type, 0.0)
            for i in range(2)
        ]
    ).mean()  # fmt: skip
    torch.testing.assert_close(out.dpo, dpo)
    leaves = (chosen["logits"], rejected["logits"])
    _, _, kd = _reference(config, chosen, rejected, ref_c, ref_r)
    expected = dpo + kd["pos"] + kd["neg"]
    for g, w in zip(torch.autograd.grad(out.loss, leaves), torch.autograd.grad(expected, leaves), strict=True):
        torch.testing.assert_close(g, w)
    # a constant gap equals the fixed margin it adds up to
    batch.score_gaps = torch.full((2,), 0.4, dtype=torch.float64)
    fixed = dpd_loss(logits, batch, DPDLossConfig(margin=0.3, loss_type=loss_type))
    torch.testing.assert_close(dpd_loss(logits, batch, config).loss, fixed.loss)


def test_score_gap_needs_the_gaps_and_checks_their_shape() -> None:
    chosen, rejected, ref_c, ref_r = _batch()
    logits, batch = _stack(chosen, rejected, ref_c, ref_r)
    with pytest.raises(ValueError, match="needs score_gaps"):
        dpd_loss(logits, batch, DPDLossConfig(margin_mode="score-gap"))
    with pytest.raises(ValueError, match="score_gaps must be"):
        DPDBatch(batch.labels, batch.loss_mask, batch.teacher, batch.ref_logps, torch.zeros(3))
    # no DPO term: no gaps needed
    dpd_loss(logits, batch, DPDLossConfig(margin_mode="score-gap", dpo_weight=0.0))


def test_sequence_reduction_weighs_each_sequence_equally() -> None:
    """Per sequence then per batch, against the reference, and different from the token mean."""
    chosen, rejected, ref_c, ref_r = _batch()
    assert chosen["rows"].sum(1).unique().numel() > 1 or rejected["rows"].sum(1).unique().numel() > 1
    config = DPDLossConfig(kd_reduction="sequence", pos_divergence="jsd", temperature=1.3)
    out = _call(config, chosen, rejected, ref_c, ref_r)
    expected, _, kd = _reference(config, chosen, rejected, ref_c, ref_r)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.pos, kd["pos"])
    torch.testing.assert_close(out.neg, kd["neg"])
    leaves = (chosen["logits"], rejected["logits"])
    for g, w in zip(torch.autograd.grad(out.loss, leaves), torch.autograd.grad(expected, leaves), strict=True):
        torch.testing.assert_close(g, w)
    token = _call(replace(config, kd_reduction="token"), chosen, rejected, ref_c, ref_r)
    assert not torch.allclose(token.pos, out.pos)
