"""sparse_kd_loss against plain float64 references: values, gradients, masks, chunks, tails, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from dualdistill.losses import DIVERGENCES, SparseKDLoss, sparse_kd_loss
from dualdistill.teacher_logits import TeacherLogits
from tests.client.losses.loss_reference import (
    coarse_kd_reference,
    dense_teacher_probs,
    divergence_probs,
    ids_indicator,
    make_sampled_teacher,
    make_teacher,
    sampled_kd_reference,
)

ALPHA, BETA = 0.1, 0.3
# every divergence, plus the generalised JSD at both of its ends
CASES = [(name, BETA) for name in DIVERGENCES] + [("jsd", 0.0), ("jsd", 1.0)]
CASE_IDS = [f"{name}-b{beta}" for name, beta in CASES]


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize(("name", "beta"), CASES, ids=CASE_IDS)
def test_full_vocabulary_rows_equal_the_full_vocabulary_divergence(name: str, beta: float) -> None:
    torch.manual_seed(0)
    b, length, vocab = 2, 9, 37
    teacher = make_teacher(torch.randn(b, length, vocab) * 2, k=vocab)
    assert torch.isinf(teacher.tail).all()
    x = (torch.randn(b, length, vocab, dtype=torch.float64) * 2).requires_grad_()
    loss = sparse_kd_loss(x, teacher, name, alpha=ALPHA, beta=beta, chunk_size=4)
    p = dense_teacher_probs(teacher, vocab)
    expected = divergence_probs(name, p, torch.softmax(x, -1), ALPHA, beta).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(loss, x), _grad(expected, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "beta"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_on_odd_shapes_with_masks_and_ragged_rows(
    name: str, beta: float, dtype: torch.dtype
) -> None:
    torch.manual_seed(1)
    b, length, k, vocab = 3, 47, 31, 123
    mask = torch.rand(b, length) > 0.3
    mask[1] = False  # a fully ignored sequence
    teacher = make_teacher(torch.randn(b, length, vocab) * 3, k=k, mask=mask, ragged=True, seed=1)
    padded = torch.isinf(teacher.logprobs)
    # padding ids are 0: some rows also hold 0 as a real id, the case a plain scatter would get wrong
    assert ((teacher.ids == 0) & ~padded).any(-1).logical_and(padded.any(-1)).any()
    x = (torch.randn(b, length, vocab) * 3).to(dtype).requires_grad_()
    loss = sparse_kd_loss(x, teacher, name, temperature=1.3, alpha=ALPHA, beta=beta, chunk_size=16)
    x64 = x.detach().double().requires_grad_()
    expected = coarse_kd_reference(x64, teacher, name, temperature=1.3, alpha=ALPHA, beta=beta)
    grad, expected_grad = _grad(loss, x), _grad(expected, x64)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # the loss is computed in fp32 from the same (possibly bf16) logits: tight on the value;
    # the bf16 gradient is rounded to 8 mantissa bits
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    tol = {"rtol": 1e-4, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-5}
    torch.testing.assert_close(grad.double(), expected_grad, **tol)
    assert (grad[1] == 0).all() and (grad[~mask] == 0).all()


# skew_reverse_kl's gradient is by design not the gradient of its value (the student inside the mixture
# is detached, as in DistiLLM-2), so finite differences cannot check it; test_skew_reverse_kl_detaches_...
# checks it against a float64 autograd reference, and skew_reverse_kl_full is gradchecked here
GRADCHECK_CASES = [(n, b) for n, b in CASES if n != "skew_reverse_kl"]


@pytest.mark.parametrize(
    ("name", "beta"), GRADCHECK_CASES, ids=[f"{n}-b{b}" for n, b in GRADCHECK_CASES]
)
def test_gradcheck_float64(name: str, beta: float) -> None:
    torch.manual_seed(2)
    teacher = make_teacher(torch.randn(2, 4, 7), k=3, ragged=True, seed=2)
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return sparse_kd_loss(z, teacher, name, temperature=1.7, alpha=0.2, beta=beta, chunk_size=3)

    assert torch.autograd.gradcheck(fn, (x,))


def test_gradcheck_sampled_mode() -> None:
    torch.manual_seed(3)
    teacher = make_sampled_teacher(
        torch.randn(2, 4, 7), samples=5, generator=torch.Generator().manual_seed(3)
    )
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sparse_kd_loss(z, teacher, chunk_size=3), (x,))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_all_masked_batch_is_zero_with_zero_gradient(name: str) -> None:
    teacher = make_teacher(torch.randn(2, 5, 11), k=4, mask=torch.zeros(2, 5, dtype=torch.bool))
    x = torch.randn(2, 5, 11, requires_grad=True)
    loss = sparse_kd_loss(x, teacher, name)
    assert loss.requires_grad and loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize(("name", "beta"), CASES, ids=CASE_IDS)
def test_tiny_tail_keeps_full_precision(name: str, beta: float) -> None:
    """Top-k covers all but ~1e-9 of both distributions: no NaN/inf, fp32 matches the float64 reference."""
    torch.manual_seed(4)
    b, length, vocab, k = 2, 6, 40, 36
    teacher_logits = torch.randn(b, length, vocab)
    teacher_logits[..., k:] = -21.0  # 4 ids far below the rest: tail mass ~ 4 * e^-21 / Z ~ 1e-9
    student = torch.randn(b, length, vocab)
    student[..., k:] -= 22.0
    order = torch.randperm(vocab)  # the tail ids are not the last columns of the vocabulary
    teacher = make_teacher(teacher_logits[..., order], k=k)
    assert (teacher.tail < -18).all() and (teacher.tail > -24).all()
    x = student[..., order].clone().requires_grad_()
    loss = sparse_kd_loss(x, teacher, name, alpha=ALPHA, beta=beta)
    x64 = x.detach().double().requires_grad_()
    expected = coarse_kd_reference(x64, teacher, name, alpha=ALPHA, beta=beta)
    grad = _grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    expected_grad = _grad(expected, x64)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-8)
    # the tail ids' own gradients are ~1e-11: they must match to relative precision, not just absolutely
    tail_ids = ~ids_indicator(teacher.ids, teacher.logprobs > float("-inf"), vocab)
    torch.testing.assert_close(grad.double()[tail_ids], expected_grad[tail_ids], rtol=1e-3, atol=1e-16)


def test_tail_far_below_float32_resolution_stays_finite() -> None:
    """A student tail of ~1e-40 (1 - sum q == 0 in float32) still gives a finite loss and gradient."""
    vocab = 10
    teacher = make_teacher(torch.zeros(1, 1, vocab), k=8)  # teacher tail = 2 / 10
    x = torch.zeros(1, 1, vocab)
    x[..., 8:] = -90.0
    x.requires_grad_()
    for name in DIVERGENCES:
        loss = sparse_kd_loss(x, teacher, name)
        x64 = x.detach().double().requires_grad_()
        expected = coarse_kd_reference(x64, teacher, name)
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(_grad(loss, x)).all()


@pytest.mark.parametrize("sampled", [False, True], ids=["topk", "sampled"])
def test_chunked_equals_unchunked(sampled: bool) -> None:
    torch.manual_seed(5)
    logits = torch.randn(3, 13, 29)
    if sampled:
        teacher = make_sampled_teacher(logits, samples=8, generator=torch.Generator().manual_seed(5))
    else:
        teacher = make_teacher(logits, k=6, ragged=True, seed=5)
    x = torch.randn(3, 13, 29, requires_grad=True)
    results = []
    for chunk_size in (1, 5, 39, 10_000):
        loss = sparse_kd_loss(x, teacher, "forward_kl", chunk_size=chunk_size)
        results.append((loss, _grad(loss, x)))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-6, atol=1e-9)


def test_sampled_mode_matches_its_formula() -> None:
    torch.manual_seed(6)
    teacher = make_sampled_teacher(
        torch.randn(2, 7, 19), samples=12, generator=torch.Generator().manual_seed(6)
    )
    x = torch.randn(2, 7, 19, requires_grad=True)
    loss = sparse_kd_loss(x, teacher)
    x64 = x.detach().double().requires_grad_()
    expected = sampled_kd_reference(x64, teacher)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(_grad(loss, x).double(), _grad(expected, x64), rtol=1e-5, atol=1e-8)


def test_sampled_estimator_is_unbiased() -> None:
    """Average of many seeded draws of the estimator (value and gradient) = exact forward KL (and gradient).

    Each of M rows shares the same student and teacher distribution but has its own N draws, so one call
    averages M independent estimates; the tolerance is 5 standard errors of that average.
    """
    torch.manual_seed(7)
    vocab, draws, rows = 12, 16, 4000
    teacher_row = torch.randn(vocab) * 1.5
    student_row = torch.randn(vocab, dtype=torch.float64)
    teacher = make_sampled_teacher(
        teacher_row.expand(1, rows, vocab), samples=draws, generator=torch.Generator().manual_seed(7)
    )
    x = student_row.expand(1, rows, vocab).clone().requires_grad_()
    loss = sparse_kd_loss(x, teacher)
    # the loss is a mean over rows, so summing the per-row gradients averages them
    mean_grad = _grad(loss, x).sum(dim=(0, 1))
    p = torch.softmax(teacher_row.double(), -1)
    q = torch.softmax(student_row, -1)
    exact_grad = q - p
    grad_se = (p * (1 - p) / draws / rows).sqrt()  # standard error of mean(c_j / N)
    assert ((mean_grad - exact_grad).abs() <= 5 * grad_se + 1e-12).all()
    log_ratio = torch.log_softmax(teacher_row.double(), -1) - torch.log_softmax(student_row, -1)
    exact_kl = (p * log_ratio).sum()
    kl_se = math.sqrt(float((p * log_ratio**2).sum() - exact_kl**2) / draws / rows)
    assert abs(loss.item() - exact_kl.item()) <= 5 * kl_se


@pytest.mark.parametrize("name", [d for d in DIVERGENCES if d != "forward_kl"])
def test_sampled_mode_rejects_other_divergences(name: str) -> None:
    teacher = make_sampled_teacher(
        torch.randn(1, 3, 9), samples=4, generator=torch.Generator().manual_seed(0)
    )
    with pytest.raises(ValueError, match="no unbiased estimator"):
        sparse_kd_loss(torch.randn(1, 3, 9), teacher, name)


def test_temperature_scales_the_student_and_optionally_the_loss() -> None:
    torch.manual_seed(8)
    teacher = make_teacher(torch.randn(2, 5, 17), k=5)
    x = torch.randn(2, 5, 17, dtype=torch.float64)
    expected = coarse_kd_reference(x, teacher, "forward_kl", temperature=2.5)
    plain = sparse_kd_loss(x, teacher, temperature=2.5)
    scaled = sparse_kd_loss(x, teacher, temperature=2.5, scale_by_temperature_squared=True)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(scaled, expected * 6.25)


def test_extra_mask_is_intersected_with_the_teacher_mask() -> None:
    torch.manual_seed(9)
    teacher = make_teacher(torch.randn(2, 6, 13), k=4, mask=torch.rand(2, 6) > 0.3)
    extra = torch.rand(2, 6) > 0.5
    x = torch.randn(2, 6, 13, dtype=torch.float64)
    got = sparse_kd_loss(x, teacher, "reverse_kl", mask=extra)
    torch.testing.assert_close(got, coarse_kd_reference(x, teacher, "reverse_kl", mask=extra))


def test_graph_keeps_no_vocabulary_sized_tensor_besides_the_logits() -> None:
    """What autograd saves for backward: the logits themselves and (N, k)-sized teacher tensors only."""
    b, length, vocab, k = 2, 64, 500, 8
    teacher = make_teacher(torch.randn(b, length, vocab), k=k)
    x = torch.randn(b, length, vocab, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = sparse_kd_loss(x, teacher, "jsd", chunk_size=16)
    others = [t for t in saved if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
    assert sum(t.numel() for t in others) <= 4 * b * length * (k + 1)
    loss.backward()


def test_module_wrapper_matches_function_and_validates() -> None:
    teacher = make_teacher(torch.randn(1, 4, 9), k=3)
    x = torch.randn(1, 4, 9)
    module = SparseKDLoss("skew_reverse_kl", temperature=1.5, alpha=0.2, chunk_size=2)
    expected = sparse_kd_loss(x, teacher, "skew_reverse_kl", temperature=1.5, alpha=0.2)
    torch.testing.assert_close(module(x, teacher), expected)
    with pytest.raises(ValueError, match="'forward_kl', 'reverse_kl'"):
        SparseKDLoss("kl")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"divergence": "tvd"}, "choose one of 'forward_kl'"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.0}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict, match: str) -> None:
    teacher = make_teacher(torch.randn(1, 3, 5), k=2)
    with pytest.raises(ValueError, match=match):
        sparse_kd_loss(torch.randn(1, 3, 5), teacher, **kwargs)


def test_misaligned_or_out_of_range_teacher_is_rejected() -> None:
    teacher = make_teacher(torch.randn(1, 3, 5), k=2)
    with pytest.raises(ValueError, match="seq_len=4"):
        sparse_kd_loss(torch.randn(1, 4, 5), teacher)
    with pytest.raises(ValueError, match=r"\[0, V=4\)"):
        bad = TeacherLogits(
            ids=torch.full((1, 3, 2), 4), logprobs=teacher.logprobs, token_logprobs=teacher.token_logprobs,
            tail=teacher.tail, mask=teacher.mask,
        )  # fmt: skip
        sparse_kd_loss(torch.randn(1, 3, 4), bad)


def test_skew_reverse_kl_detaches_the_student_inside_the_mixture() -> None:
    """DistiLLM-2's gradient: d/dz of sum q (log q - log m) with m = (1 - a) p + a q, q in m held constant."""
    torch.manual_seed(7)
    b, length, vocab, alpha = 2, 5, 13, 0.1
    teacher = make_teacher(torch.randn(b, length, vocab) * 2, k=vocab)
    x = (torch.randn(b, length, vocab, dtype=torch.float64) * 2).requires_grad_()
    loss = sparse_kd_loss(x, teacher, "skew_reverse_kl", alpha=alpha, chunk_size=3)
    full = sparse_kd_loss(x, teacher, "skew_reverse_kl_full", alpha=alpha, chunk_size=3)
    # plain float64 reference, dense vocabulary, written out: the mixture from a detached copy of q
    p = dense_teacher_probs(teacher, vocab)
    q = torch.softmax(x, -1)
    m = (1 - alpha) * p + alpha * q.detach()
    expected = (q * (torch.log(q) - torch.log(m))).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full, expected, rtol=1e-12, atol=1e-12)  # same value
    grad, want, grad_full = _grad(loss, x), _grad(expected, x), _grad(full, x)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)
    # closed form: d/dz_v = q_v (g_v - sum_u q_u g_u) with g = d f / d q = log q - log m + 1
    g = torch.log(q) - torch.log(m) + 1
    closed = q * (g - (q * g).sum(-1, keepdim=True)) / (b * length)
    torch.testing.assert_close(grad, closed.detach(), rtol=1e-10, atol=1e-12)
    # and it is not the fully differentiated gradient
    assert (grad - grad_full).norm() > 1e-3 * grad_full.norm()


@pytest.mark.parametrize("name", ["forward_kl", "skew_reverse_kl_full", "jsd"])
def test_sequence_reduction_matches_reference_and_skips_empty_sequences(name: str) -> None:
    torch.manual_seed(8)
    b, length, k, vocab = 3, 7, 4, 11
    mask = torch.rand(b, length) > 0.4
    mask[0, :2] = True
    mask[1] = False  # an empty sequence takes no share of the mean
    teacher = make_teacher(torch.randn(b, length, vocab) * 2, k=k, mask=mask, ragged=True, seed=8)
    x = torch.randn(b, length, vocab, dtype=torch.float64, requires_grad=True)
    loss = sparse_kd_loss(x, teacher, name, temperature=1.2, reduction="sequence", chunk_size=3)
    expected = coarse_kd_reference(x, teacher, name, temperature=1.2, reduction="sequence")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(loss, x), _grad(expected, x), rtol=1e-10, atol=1e-12)
    fn = lambda z: sparse_kd_loss(z, teacher, name, temperature=1.2, reduction="sequence", chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    empty = make_teacher(torch.randn(b, length, vocab), k=k, mask=torch.zeros(b, length, dtype=torch.bool))
    zero = sparse_kd_loss(x, empty, name, reduction="sequence")
    assert zero.item() == 0.0 and not _grad(zero, x).any()
    with pytest.raises(ValueError, match="reduction='mean' is not supported"):
        sparse_kd_loss(x, teacher, name, reduction="mean")
