"""TeacherLogits: padding service results into student-aligned tensors (row for position i at index i - 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dualdistill.losses import sequence_logps, shift_labels, sparse_kd_loss
from dualdistill.protocol.results import SequenceLogits
from dualdistill.teacher_logits import TeacherLogits

NEG_INF = float("-inf")


def _row_result(
    rows: list[list[tuple[int, float]]], token_logprobs: list[float], tails: list[float]
) -> SequenceLogits:
    return SequenceLogits(
        row_lengths=np.array([len(r) for r in rows]),
        top_ids=np.array([i for r in rows for i, _ in r]),
        top_logprobs=np.array([lp for r in rows for _, lp in r]),
        token_logprobs=np.array(token_logprobs),
        tail_logprobs=np.array(tails),
    )


# sequence A: T = 5, start = 2 -> positions 2, 3, 4 -> indices 1, 2, 3 (rows of 2 entries)
A = _row_result(
    [[(7, -0.1), (3, -2.5)], [(4, -0.3), (9, -1.5)], [(1, -0.05), (2, -3.2)]],
    token_logprobs=[-2.5, -0.3, -0.05],
    tails=[-3.0, -2.0, -4.0],
)
# sequence B: T = 3, start = 1 -> positions 1, 2 -> indices 0, 1 (rows of 3 entries)
B = _row_result(
    [[(5, -0.2), (6, -1.9), (8, -3.0)], [(0, -0.7), (2, -0.9), (4, -2.6)]],
    token_logprobs=[-1.9, -0.7],
    tails=[-5.0, -3.5],
)


def test_hand_made_batch_lands_at_index_position_minus_one() -> None:
    teacher = TeacherLogits.from_results([A, B], starts=[2, 1], seq_len=6)
    assert (teacher.batch_size, teacher.seq_len, teacher.k) == (2, 6, 3)
    assert teacher.mask.tolist() == [
        [False, True, True, True, False, False],
        [True, True, False, False, False, False],
    ]
    assert teacher.ids[0, 1].tolist() == [7, 3, 0] and teacher.ids[0, 3].tolist() == [1, 2, 0]
    assert teacher.logprobs[0, 2].tolist() == pytest.approx([-0.3, -1.5, NEG_INF])
    assert teacher.ids[1, 0].tolist() == [5, 6, 8] and teacher.ids[1, 1].tolist() == [0, 2, 4]
    assert teacher.token_logprobs[0].tolist() == pytest.approx([0, -2.5, -0.3, -0.05, 0, 0])
    assert teacher.tail[1].tolist() == pytest.approx([-5.0, -3.5, 0, 0, 0, 0])
    # rows without a teacher: id 0, logprob -inf, all mass in the tail
    assert teacher.ids[0, 0].tolist() == [0, 0, 0] and torch.isinf(teacher.logprobs[0, 4]).all()
    assert teacher.counts is None and teacher.samples is None and not teacher.is_sampled
    assert teacher.ids.dtype == torch.int64 and teacher.logprobs.dtype == torch.float32


def test_narrower_k_folds_dropped_mass_into_the_tail() -> None:
    teacher = TeacherLogits.from_results([A, B], starts=[2, 1], seq_len=5, k=2)
    assert teacher.k == 2 and teacher.ids[1, 0].tolist() == [5, 6]
    assert teacher.tail[1, 0].item() == pytest.approx(math.log(math.exp(-5.0) + math.exp(-3.0)), rel=1e-6)
    assert teacher.tail[0, 1].item() == pytest.approx(-3.0)  # rows of width 2 are unchanged


def test_sampled_results_keep_counts_and_samples() -> None:
    sampled = SequenceLogits(
        row_lengths=np.array([2, 1]),
        top_ids=np.array([3, 1, 2]),
        top_logprobs=np.array([-0.2, -1.8, -0.01]),
        token_logprobs=np.array([-1.8, -0.01]),
        tail_logprobs=np.array([-2.0, -5.0]),
        counts=np.array([3, 1, 4]),
    )
    teacher = TeacherLogits.from_results([sampled], starts=[3], seq_len=5)
    assert teacher.is_sampled and teacher.samples == 4
    assert teacher.counts[0, 2].tolist() == [3, 1] and teacher.counts[0, 3].tolist() == [4, 0]
    with pytest.raises(ValueError, match="cannot be truncated"):
        TeacherLogits.from_results([sampled], starts=[3], seq_len=5, k=1)
    with pytest.raises(ValueError, match="mix 'topk' and 'sample'"):
        TeacherLogits.from_results([sampled, A], starts=[3, 2], seq_len=5)


def test_from_results_rejects_bad_placement() -> None:
    with pytest.raises(ValueError, match="pad the student batch to >= 5"):
        TeacherLogits.from_results([A], starts=[2], seq_len=4)
    with pytest.raises(ValueError, match="first position with a teacher row is 1"):
        TeacherLogits.from_results([A], starts=[0], seq_len=6)
    with pytest.raises(ValueError, match="one start per result"):
        TeacherLogits.from_results([A, B], starts=[2], seq_len=6)


def test_constructor_validates_shapes_and_modes() -> None:
    good = TeacherLogits.from_results([A], starts=[2], seq_len=6)
    with pytest.raises(ValueError, match=r"tail must have shape \(1, 6\)"):
        TeacherLogits(good.ids, good.logprobs, good.token_logprobs, good.tail[:, :5], good.mask)
    with pytest.raises(ValueError, match="ids must be"):
        TeacherLogits(good.ids[0], good.logprobs, good.token_logprobs, good.tail, good.mask)
    with pytest.raises(ValueError, match="mask must be a bool"):
        TeacherLogits(good.ids, good.logprobs, good.token_logprobs, good.tail, good.mask.int())
    with pytest.raises(ValueError, match="counts and samples go together"):
        TeacherLogits(good.ids, good.logprobs, good.token_logprobs, good.tail, good.mask, samples=4)


def test_to_moves_every_tensor() -> None:
    teacher = TeacherLogits.from_results([A, B], starts=[2, 1], seq_len=6)
    moved = teacher.to("meta")
    assert moved.device.type == "meta" and moved.mask.device.type == "meta" and moved.k == teacher.k
    back = teacher.to("cpu")
    assert torch.equal(back.ids, teacher.ids) and back.device == teacher.device


def test_sequence_logps_uses_label_positions() -> None:
    teacher = TeacherLogits.from_results([A, B], starts=[2, 1], seq_len=6)
    response = torch.zeros(2, 6, dtype=torch.bool)
    response[0, 3:5] = True  # tokens 3, 4 of A -> rows 2, 3
    response[1, 2] = True  # token 2 of B -> row 1
    _, rows = shift_labels(torch.zeros(2, 6, dtype=torch.long), response)
    assert teacher.sequence_logps(rows).tolist() == pytest.approx([-0.35, -0.7])
    assert teacher.sequence_logps(rows, length_normalize=True).tolist() == pytest.approx([-0.175, -0.7])
    assert teacher.sequence_logps().tolist() == pytest.approx([-2.85, -2.6])


def _bigram_results(table: torch.Tensor, tokens: list[int], start: int) -> SequenceLogits:
    """What the service returns for a bigram teacher: p(. | x[:i]) = softmax(table[x[i - 1]]), full vocab."""
    log_p = torch.log_softmax(table.double(), -1)
    rows = [log_p[tokens[i - 1]] for i in range(start, len(tokens))]
    values, ids = torch.stack(rows).sort(-1, descending=True)
    token = [float(log_p[tokens[i - 1], tokens[i]]) for i in range(start, len(tokens))]
    return SequenceLogits.from_dense(
        ids.numpy(), values.float().numpy(), np.array(token), np.full(len(rows), -np.inf)
    )


def test_alignment_end_to_end_with_a_bigram_model() -> None:
    """A student equal to the teacher has zero KD loss and the teacher's sequence score only when aligned."""
    torch.manual_seed(0)
    vocab = 11
    table = torch.randn(vocab, vocab) * 2
    sequences = [[1, 4, 2, 9, 3, 3, 7], [5, 0, 8, 8]]
    starts = [3, 1]
    seq_len = 7
    input_ids = torch.zeros(2, seq_len, dtype=torch.long)
    response = torch.zeros(2, seq_len, dtype=torch.bool)
    for b, (tokens, start) in enumerate(zip(sequences, starts, strict=True)):
        input_ids[b, : len(tokens)] = torch.tensor(tokens)
        response[b, start : len(tokens)] = True
    results = [_bigram_results(table, t, s) for t, s in zip(sequences, starts, strict=True)]
    teacher = TeacherLogits.from_results(results, starts, seq_len)
    student_logits = table[input_ids].double()  # logits at j depend on x[j] and predict x[j + 1]
    assert sparse_kd_loss(student_logits, teacher).item() == pytest.approx(0.0, abs=1e-6)
    shifted = torch.roll(student_logits, 1, dims=1)  # an off-by-one student is visibly wrong
    assert sparse_kd_loss(shifted, teacher).item() > 0.1
    torch.testing.assert_close(
        teacher.sequence_logps(shift_labels(input_ids, response)[1]).double(),
        sequence_logps(student_logits, *shift_labels(input_ids, response)),
        rtol=1e-6,
        atol=1e-5,
    )
