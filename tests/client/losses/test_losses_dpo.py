"""dpo_loss against the formulas written by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dualdistill.losses import DPO_LOSS_TYPES, DPOLoss, dpo_loss
from tests.client.losses.loss_reference import dpo_reference


def _batch(seed: int, size: int = 8, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(-20 + 5 * torch.randn(size, generator=generator)).to(dtype) for _ in range(4)]


# label smoothing is a sigmoid-loss option
CASES = [(t, m, 0.0) for t in DPO_LOSS_TYPES for m in (0.0, 0.5)] + [("sigmoid", 0.2, 0.1)]


@pytest.mark.parametrize(("loss_type", "margin", "label_smoothing"), CASES)
def test_matches_formula_with_gradients(loss_type: str, margin: float, label_smoothing: float) -> None:
    pi_c, pi_r, ref_c, ref_r = _batch(0)
    pi_c.requires_grad_()
    pi_r.requires_grad_()
    loss, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.3, margin, loss_type, label_smoothing)
    expected = dpo_reference(pi_c, pi_r, ref_c, ref_r, 0.3, margin, loss_type, label_smoothing)
    torch.testing.assert_close(loss, expected)
    got_grads = torch.autograd.grad(loss, (pi_c, pi_r))
    expected_grads = torch.autograd.grad(expected, (pi_c, pi_r))
    for got, want in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(
        lambda a, b: dpo_loss(a, b, ref_c, ref_r, 0.3, margin, loss_type, label_smoothing)[0], (pi_c, pi_r)
    )


def test_single_pair_by_hand_and_metrics() -> None:
    # chosen log-ratio 2 - 1 = 1, rejected log-ratio -1 - 0 = -1: logits = 2, beta 0.5 -> z = 1 - margin
    pi_c, pi_r = torch.tensor([2.0]), torch.tensor([-1.0])
    ref_c, ref_r = torch.tensor([1.0]), torch.tensor([0.0])
    loss, metrics = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, margin=0.25)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.75)))
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == 1.0
    assert metrics["logps/chosen"].item() == 2.0 and metrics["logps/rejected"].item() == -1.0
    ipo, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, loss_type="ipo")
    assert ipo.item() == pytest.approx((2 - 1) ** 2)  # target 1 / (2 * 0.5) = 1
    hinge, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, margin=0.5, loss_type="hinge")
    assert hinge.item() == pytest.approx(0.5)  # relu(1 - 1 + 0.5)


def test_references_get_no_gradient_and_float32_stays_float32() -> None:
    pi_c, pi_r, ref_c, ref_r = (t.requires_grad_() for t in _batch(1, dtype=torch.float32))
    loss, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r)
    assert loss.dtype == torch.float32
    loss.backward()
    assert ref_c.grad is None and ref_r.grad is None and pi_c.grad is not None


def test_empty_batch_gives_zero_not_nan() -> None:
    empty = torch.zeros(0, requires_grad=True)
    loss, metrics = dpo_loss(empty, empty, torch.zeros(0), torch.zeros(0))
    assert loss.item() == 0.0 and not any(torch.isnan(v) for v in metrics.values())
    loss.backward()


def test_module_wrapper_and_validation() -> None:
    batch = _batch(2)
    module = DPOLoss(beta=0.2, margin=0.1, loss_type="hinge")
    torch.testing.assert_close(
        module(*batch)[0], dpo_loss(*batch, beta=0.2, margin=0.1, loss_type="hinge")[0]
    )
    with pytest.raises(ValueError, match="'sigmoid', 'ipo', 'hinge'"):
        DPOLoss(loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOLoss(label_smoothing=0.5)
    with pytest.raises(ValueError, match="sigmoid"):
        DPOLoss(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ref_chosen_logps must have shape"):
        dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3))


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_per_pair_margins_match_the_formula_pair_by_pair(loss_type: str) -> None:
    pi_c, pi_r, ref_c, ref_r = _batch(3, size=5)
    pi_c.requires_grad_()
    margins = torch.tensor([0.0, 0.5, 1.0, 0.25, 2.0], dtype=torch.float64)
    loss, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.3, margins, loss_type)
    # independent: each pair alone with its own scalar margin, then the mean
    expected = torch.stack(
        [
            dpo_reference(pi_c[i : i + 1], pi_r[i : i + 1], ref_c[i : i + 1], ref_r[i : i + 1], 0.3,
                          float(margins[i]), loss_type, 0.0)
            for i in range(5)
        ]
    ).mean()  # fmt: skip
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, pi_c)[0], torch.autograd.grad(expected, pi_c)[0])
    same, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.3, torch.full((5,), 0.5, dtype=torch.float64), loss_type)
    torch.testing.assert_close(same, dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.3, 0.5, loss_type)[0])


def test_per_pair_margins_are_checked() -> None:
    batch = _batch(4, size=3)
    with pytest.raises(ValueError, match="per-pair margin must have shape"):
        dpo_loss(*batch, margin=torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        dpo_loss(*batch, margin=torch.tensor([0.0, float("nan"), 0.0]))
