"""fused_dpd_loss (hidden states + LM head, chunked) == dpd_loss on the materialised logits, values and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dualdistill.losses import PRESETS, DPDBatch, DPDLossConfig, dpd_loss, fused_dpd_loss, shift_labels
from tests.client.losses.loss_reference import make_sampled_teacher, make_teacher

B, L, H, VOCAB = 2, 9, 6, 23


def _inputs(seed: int, k: int = 5, sampled: bool = False, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(VOCAB, H, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    head_bias = (
        (torch.randn(VOCAB, generator=g, dtype=torch.float64) * 0.3).requires_grad_() if bias else None
    )
    ids = torch.randint(0, VOCAB, (2 * B, L), generator=g)
    response = torch.zeros(2 * B, L, dtype=torch.bool)
    response[:, 3:] = True
    response[1, L - 2 :] = False  # right padding
    response[3, L - 3 :] = False
    labels, loss_mask = shift_labels(ids, response)
    teacher_logits = torch.randn(2 * B, L, VOCAB, generator=g) * 2
    if sampled:
        teacher = make_sampled_teacher(teacher_logits, samples=8, generator=g)
    else:
        rows = torch.ones(2 * B, L, dtype=torch.bool)
        rows[:, :2] = False  # the teacher starts one row before the response on ...
        rows[0, 2] = True  # ... some sequences; KD uses rows with a teacher row AND the loss mask
        teacher = make_teacher(teacher_logits, k=k, mask=rows)
    ref = -torch.rand(2 * B, generator=g, dtype=torch.float64) * 20
    return hidden, weight, head_bias, DPDBatch(labels, loss_mask, teacher, ref)


CONFIGS = {
    **{name: DPDLossConfig.preset(name, chunk_size=5) for name in PRESETS},
    "jsd-reverse-temperature": DPDLossConfig(
        dpo_weight=0.5, pos_weight=2.0, neg_weight=0.25, beta=0.2, margin=0.3, loss_type="ipo",
        pos_divergence="jsd", neg_divergence="reverse_kl", jsd_beta=0.3, temperature=1.5, chunk_size=3,
    ),
    "sequence-reduction-scaled": DPDLossConfig(
        pos_divergence="jsd", neg_divergence="skew_reverse_kl_full", kd_reduction="sequence",
        temperature=1.3, scale_by_temperature_squared=True, chunk_size=4,
    ),
    "skews-scaled-normalised": DPDLossConfig(
        pos_divergence="skew_forward_kl", neg_divergence="skew_reverse_kl", alpha=0.2, temperature=0.7,
        scale_by_temperature_squared=True, length_normalize=True, loss_type="hinge", chunk_size=4,
    ),
}  # fmt: skip


def _compare(config: DPDLossConfig, hidden, weight, bias, batch) -> None:
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    got = fused_dpd_loss(hidden, weight, bias, batch, config)
    want = dpd_loss(F.linear(hidden, weight, bias), batch, config)
    for name in ("loss", "dpo", "pos", "neg"):
        torch.testing.assert_close(
            getattr(got, name).double(), getattr(want, name).double(), atol=1e-10, rtol=1e-10
        )
    assert got.metrics.keys() == want.metrics.keys()
    for key in want.metrics:
        torch.testing.assert_close(
            got.metrics[key].double(), want.metrics[key].double(), atol=1e-10, rtol=1e-10
        )
    grads_got = torch.autograd.grad(got.loss, leaves)
    grads_want = torch.autograd.grad(want.loss, leaves)
    for g, w in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_matches_unfused_for_every_preset_and_divergence(name: str) -> None:
    _compare(CONFIGS[name], *_inputs(0))


@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "skew_reverse_kl_full", "jsd"]
)
def test_fused_matches_unfused_for_each_divergence_at_k_equal_v(divergence: str) -> None:
    config = DPDLossConfig(
        pos_divergence=divergence, neg_divergence=divergence, temperature=1.3, chunk_size=7
    )
    _compare(config, *_inputs(1, k=VOCAB))  # k = V: tail -inf, the complement is empty


def test_fused_matches_unfused_on_sampled_rows_without_bias() -> None:
    _compare(DPDLossConfig(temperature=2.0, chunk_size=4), *_inputs(2, sampled=True, bias=False))
    with pytest.raises(ValueError, match="no unbiased estimator"):
        hidden, weight, bias, batch = _inputs(2, sampled=True)
        fused_dpd_loss(hidden, weight, bias, batch, DPDLossConfig(neg_divergence="reverse_kl"))


def test_fused_all_masked_batch_is_zero_with_zero_gradients() -> None:
    hidden, weight, bias, batch = _inputs(3)
    batch.loss_mask = torch.zeros_like(batch.loss_mask)
    out = fused_dpd_loss(hidden, weight, bias, batch, DPDLossConfig())
    assert out.pos.item() == 0.0 and out.neg.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert not hidden.grad.any() and not weight.grad.any()


def test_fused_float32_and_bfloat16_stay_close_to_float64() -> None:
    hidden, weight, bias, batch = _inputs(4)
    want = dpd_loss(F.linear(hidden, weight, bias), batch, DPDLossConfig(chunk_size=3)).loss
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        h, w, b = (t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias))
        got = fused_dpd_loss(h, w, b, batch, DPDLossConfig(chunk_size=3)).loss
        torch.testing.assert_close(got.double(), want.detach(), atol=tol, rtol=tol)
        got.backward()
        assert h.grad.dtype == dtype and w.grad.dtype == dtype and torch.isfinite(w.grad.float()).all()


def test_fused_passes_score_gap_margins_through() -> None:
    hidden, weight, bias, batch = _inputs(4)
    batch.score_gaps = torch.tensor([0.5, 1.5], dtype=torch.float64)
    config = DPDLossConfig(margin=0.2, margin_mode="score-gap", margin_scale=2.0, chunk_size=5)
    _compare(config, hidden, weight, bias, batch)
    fixed = fused_dpd_loss(hidden, weight, bias, batch, DPDLossConfig(margin=0.2, chunk_size=5))
    assert not torch.allclose(fused_dpd_loss(hidden, weight, bias, batch, config).dpo, fixed.dpo)


def test_fused_chunk_rows_follow_the_memory_budget() -> None:
    from dualdistill.losses.fused import chunk_rows

    config = DPDLossConfig()  # chunk_size 512, fused_chunk_mib 64
    assert chunk_rows(config, 151936, torch.float32) == 64 * 2**20 // (151936 * 4) == 110
    assert chunk_rows(config, 32000, torch.float32) == 512  # the budget allows more: chunk_size bounds it
    assert chunk_rows(DPDLossConfig(fused_chunk_mib=1e-6), 151936, torch.float32) == 1
    with pytest.raises(ValueError, match="fused_chunk_mib"):
        DPDLossConfig(fused_chunk_mib=0)


@pytest.mark.parametrize("name", ["dpd", "jsd-reverse-temperature"])
def test_fused_one_row_chunks_match_unfused(name: str) -> None:
    """A budget below one row: chunks of one row each, through the shared buffer, same values and grads."""
    config = DPDLossConfig(**{**CONFIGS[name].to_dict(), "fused_chunk_mib": VOCAB * 8 / 2**20})
    _compare(config, *_inputs(5))


def test_fused_keeps_nothing_of_logits_size_for_backward() -> None:
    """Autograd keeps the inputs and (rows,)- or (rows, k)-sized tensors, never a (rows, V) one."""
    hidden, weight, bias, batch = _inputs(6)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused_dpd_loss(hidden, weight, bias, batch, DPDLossConfig(chunk_size=4))
    rows = int(batch.loss_mask.sum())
    assert sizes and max(sizes) == hidden.numel() < rows * VOCAB  # the largest saved tensor is the input
    out.loss.backward()
