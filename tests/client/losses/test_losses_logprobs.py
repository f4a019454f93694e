"""selective_log_softmax and sequence_logps against log_softmax + gather and an explicit loop."""

from __future__ import annotations

import pytest
import torch

from dualdistill.losses import selective_log_softmax, sequence_logps, shift_labels
from tests.client.losses.loss_reference import sequence_logps_reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_selective_log_softmax_matches_log_softmax_gather(dtype: torch.dtype, chunk_size: int) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 47, 123) * 4).to(dtype).requires_grad_()
    index = torch.randint(0, 123, (3, 47))
    got = selective_log_softmax(logits, index, chunk_size=chunk_size)
    reference_logits = logits.detach().double().requires_grad_()
    expected = torch.log_softmax(reference_logits, -1).gather(-1, index[..., None]).squeeze(-1)
    assert got.shape == (3, 47) and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)
    weights = torch.randn(3, 47, dtype=torch.float64)
    (got_grad,) = torch.autograd.grad((got.double() * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), reference_logits)
    assert got_grad.dtype == dtype
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got_grad.double(), expected_grad, **tol)


def test_selective_log_softmax_gradcheck_and_leaves_logits_untouched() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    before = logits.detach().clone()
    index = torch.randint(0, 9, (5,))
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, index, chunk_size=2), (logits,))
    assert torch.equal(logits.detach(), before)


def test_selective_log_softmax_rejects_mismatched_index() -> None:
    with pytest.raises(ValueError, match="shape of logits without the vocab dim"):
        selective_log_softmax(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_sequence_logps_shift_mask_and_length_normalisation() -> None:
    torch.manual_seed(2)
    b, length, vocab = 3, 11, 17
    logits = torch.randn(b, length, vocab, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (b, length))
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[0, 4:9] = True
    mask[1, 0:6] = True  # mask[:, 0] is ignored: nothing predicts the first token
    labels[2] = -100  # a padding-only row with ignore-index labels must score 0, not crash
    expected = sequence_logps_reference(logits, labels.clamp(min=0), mask)
    targets, rows = shift_labels(labels, mask)
    torch.testing.assert_close(sequence_logps(logits, targets, rows), expected)
    counts = torch.tensor([5.0, 5.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        sequence_logps(logits, targets, rows, length_normalize=True), expected / counts
    )
    assert sequence_logps(logits, targets, rows)[2] == 0
    assert torch.autograd.gradcheck(lambda z: sequence_logps(z, targets, rows, chunk_size=4), (logits,))


def test_sequence_logps_by_hand() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[False, True, True]])
    expected = torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.7))
    torch.testing.assert_close(sequence_logps(logits, *shift_labels(labels, mask)), expected[None])


def test_sequence_logps_validates_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, L\) = \(2, 3\)"):
        sequence_logps(
            torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
        )
