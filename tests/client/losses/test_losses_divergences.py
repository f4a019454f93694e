"""The bucket divergences: agreement with the probability-space formulas, and NaN-free -inf buckets."""

from __future__ import annotations

import pytest
import torch

from dualdistill.losses import DIVERGENCES, divergence
from dualdistill.losses.divergences import log_mix, sampled_forward_kl
from tests.client.losses.loss_reference import divergence_probs

NEG_INF = float("-inf")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_matches_probability_space_formula(name: str) -> None:
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(6, 9, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.randn(6, 9, dtype=torch.float64), -1)
    got = divergence(name, lp, lq, alpha=0.25, beta=0.4)
    torch.testing.assert_close(got, divergence_probs(name, lp.exp(), lq.exp(), 0.25, 0.4))
    assert (got >= -1e-12).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_zero_mass_buckets_give_finite_values_and_gradients(name: str) -> None:
    # bucket 2 is empty for both (padding); bucket 3 empty for the teacher only, bucket 0 for the student only
    lp = torch.tensor([[-0.5, -1.5, NEG_INF, NEG_INF, -2.0]], dtype=torch.float64).log_softmax(-1)
    lq = torch.tensor([[NEG_INF, -1.0, NEG_INF, -1.0, -1.0]], dtype=torch.float64).log_softmax(-1)
    lq.requires_grad_()
    value = divergence(name, lp, lq, alpha=0.1, beta=0.5)
    (grad,) = torch.autograd.grad(value.sum(), lq)
    if name == "reverse_kl":  # the student has mass where the teacher has none: KL(q || p) = inf
        assert torch.isinf(value).all()
        return
    if name == "forward_kl":  # the teacher has mass where the student has none: KL(p || q) = inf
        assert torch.isinf(value).all()
        return
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert grad[0, 2] == 0  # an empty bucket gets no gradient
    expected = divergence_probs(name, lp.exp(), lq.detach().exp(), 0.1, 0.5)
    torch.testing.assert_close(value.detach(), expected)


def test_empty_buckets_shared_by_both_sides_are_harmless_for_the_kls() -> None:
    lp = torch.tensor([[-0.2, NEG_INF, -1.7]], dtype=torch.float64).log_softmax(-1)
    lq = torch.tensor([[-1.0, NEG_INF, -0.3]], dtype=torch.float64).log_softmax(-1).requires_grad_()
    for name in DIVERGENCES:
        value = divergence(name, lp, lq)
        (grad,) = torch.autograd.grad(value.sum(), lq)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all() and grad[0, 1] == 0


def test_jsd_ends_and_skew_zero_reduce_to_plain_kls() -> None:
    torch.manual_seed(1)
    lp = torch.log_softmax(torch.randn(4, 7, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.randn(4, 7, dtype=torch.float64), -1)
    forward, reverse = divergence("forward_kl", lp, lq), divergence("reverse_kl", lp, lq)
    torch.testing.assert_close(divergence("jsd", lp, lq, beta=0.0), forward)
    torch.testing.assert_close(divergence("jsd", lp, lq, beta=1.0), reverse)
    torch.testing.assert_close(divergence("skew_forward_kl", lp, lq, alpha=0.0), forward)
    torch.testing.assert_close(divergence("skew_reverse_kl", lp, lq, alpha=0.0), reverse)
    # small beta: JSD_b / b -> KL(p || q), the limit the b = 0 end stands for
    torch.testing.assert_close(divergence("jsd", lp, lq, beta=1e-6) / 1e-6, forward, rtol=1e-4, atol=1e-6)


def test_log_mix_and_sampled_kl_by_hand() -> None:
    la = torch.tensor([0.0, NEG_INF, NEG_INF], dtype=torch.float64)
    lb = torch.tensor([-1.0, -2.0, NEG_INF], dtype=torch.float64)
    mixed = log_mix(0.25, la, lb)
    expected = torch.log(0.25 * la.exp() + 0.75 * lb.exp())
    torch.testing.assert_close(mixed, expected)
    weights = torch.tensor([[0.75, 0.25, 0.0]])
    lp = torch.tensor([[-0.1, -2.0, NEG_INF]])
    lq = torch.tensor([[-0.5, -1.0, NEG_INF]])
    torch.testing.assert_close(sampled_forward_kl(weights, lp, lq), torch.tensor([0.75 * 0.4 + 0.25 * -1.0]))


def test_unknown_divergence_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="'forward_kl', 'reverse_kl', 'skew_forward_kl'"):
        divergence("kl", torch.zeros(1, 2), torch.zeros(1, 2))
