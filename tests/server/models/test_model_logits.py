"""compute_logits in "topk" mode against an independent unbatched float64 forward (docs/api.md Semantics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualdistill_server.models.distributions import complement_logsumexp_, sorted_topk
from tests.server.models.helpers import make_task, random_ids, reference_logprobs

ATOL = 2e-5  # float32 pipeline vs float64 reference, logprobs down to about -40


def _logsumexp64(values: np.ndarray) -> float:
    if values.size == 0 or np.all(np.isneginf(values)):
        return float("-inf")
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def _check_against_reference(tiny, task, result) -> None:
    """A correct top-k row: our ids' reference logprobs equal ours, sorted, and nothing outside beats them."""
    ref = reference_logprobs(tiny.model, task)  # (R, V) float64
    ids, logprobs, _ = result.dense()
    assert ids.shape == (task.num_rows, task.params.top_k)
    np.testing.assert_array_equal(result.row_lengths, task.params.top_k)
    for r in range(task.num_rows):
        np.testing.assert_allclose(logprobs[r], ref[r, ids[r]], atol=ATOL, rtol=1e-6)
        assert np.all(np.diff(logprobs[r]) <= 0), "row not sorted by logprob descending"
        assert len(set(ids[r].tolist())) == task.params.top_k
        outside = np.setdiff1d(np.arange(ref.shape[1]), ids[r])
        if outside.size:
            assert logprobs[r].min() >= ref[r, outside].max() - ATOL, "a better id was left out of the row"
        assert result.tail_logprobs[r] == pytest.approx(_logsumexp64(ref[r, outside]), abs=ATOL)
    targets = task.token_ids[task.start :]
    np.testing.assert_allclose(result.token_logprobs, ref[np.arange(task.num_rows), targets], atol=ATOL, rtol=1e-6)


def _mixed_tasks(vocab: int):
    rng = np.random.default_rng(7)
    return [
        make_task(random_ids(rng, 5, vocab), 1, top_k=1, temperature=1.0),
        make_task(random_ids(rng, 17, vocab), 10, top_k=7, temperature=0.5),
        make_task(random_ids(rng, 40, vocab), 39, top_k=20, temperature=2.0),
        make_task(random_ids(rng, 64, vocab), 3, top_k=50, temperature=1.3),
        make_task(random_ids(rng, 2, vocab), 1, top_k=3, temperature=0.7),
    ]


def test_topk_matches_unbatched_reference(tiny) -> None:
    tasks = _mixed_tasks(tiny.info.vocab_size)
    results = tiny.compute_logits(tasks)
    assert len(results) == len(tasks)
    for task, result in zip(tasks, results, strict=True):
        assert result.num_rows == task.num_rows
        assert result.counts is None
        _check_against_reference(tiny, task, result)


def test_real_text_rows_match_reference(tiny) -> None:
    ids = tiny.encode_text("The quick brown fox jumps over the lazy dog. What is 12 plus 30?")
    task = make_task(ids, 4, top_k=10, temperature=1.0)
    (result,) = tiny.compute_logits([task])
    _check_against_reference(tiny, task, result)


def test_batch_invariance(tiny) -> None:
    """A sequence's rows do not depend on which other (longer, shorter) sequences shared the forward."""
    tasks = _mixed_tasks(tiny.info.vocab_size)
    batched = tiny.compute_logits(tasks)
    reordered = tiny.compute_logits(tasks[::-1])[::-1]
    for b, task in enumerate(tasks):
        (alone,) = tiny.compute_logits([task])
        for other in (batched[b], reordered[b]):
            np.testing.assert_array_equal(other.top_ids, alone.top_ids)
            np.testing.assert_allclose(other.top_logprobs, alone.top_logprobs, atol=1e-5, rtol=0)
            np.testing.assert_allclose(other.token_logprobs, alone.token_logprobs, atol=1e-5, rtol=0)
            np.testing.assert_allclose(other.tail_logprobs, alone.tail_logprobs, atol=1e-5, rtol=0)


def test_full_vocab_row_has_no_tail(tiny) -> None:
    vocab = tiny.info.vocab_size
    task = make_task(random_ids(np.random.default_rng(1), 9, vocab), 2, top_k=vocab, temperature=0.8)
    (result,) = tiny.compute_logits([task])
    ids, logprobs, _ = result.dense()
    ref = reference_logprobs(tiny.model, task)
    assert np.all(np.isneginf(result.tail_logprobs))
    for r in range(task.num_rows):
        assert sorted(ids[r].tolist()) == list(range(vocab))
        assert np.all(np.diff(logprobs[r]) <= 0)
        np.testing.assert_allclose(logprobs[r], ref[r, ids[r]], atol=ATOL)
        assert _logsumexp64(logprobs[r].astype(np.float64)) == pytest.approx(0.0, abs=1e-4)


def test_single_batch_of_one_row(tiny) -> None:
    task = make_task([5, 9], 1, top_k=4)
    (result,) = tiny.compute_logits([task])
    assert result.num_rows == 1
    _check_against_reference(tiny, task, result)
    assert tiny.compute_logits([]) == []


def test_sorted_topk_breaks_ties_toward_lower_id() -> None:
    # Row 0: a tie inside the top-3 (ids 4 and 1) -> 1 first. Row 1: a tie across the k boundary (ids 5, 2, 0
    # share the 2nd value, k = 2) -> the lowest id 0 is kept. Row 2: k = 1 with the max tied at ids 3 and 6.
    logprobs = torch.tensor(
        [
            [-3.0, -1.0, -5.0, -4.0, -1.0, -0.5, -6.0, -7.0],
            [-2.0, -9.0, -2.0, -8.0, -7.0, -2.0, -1.0, -9.5],
            [-5.0, -5.0, -5.0, -0.1, -5.0, -5.0, -0.1, -5.0],
        ]
    )
    ids, values = sorted_topk(logprobs, torch.tensor([3, 2, 1]))
    assert ids[0, :3].tolist() == [5, 1, 4]
    assert ids[1, :2].tolist() == [6, 0]
    assert ids[2, :1].tolist() == [3]
    assert values[0, :3].tolist() == [-0.5, -1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_sorted_topk_breaks_ties_in_any_float_dtype(dtype) -> None:
    """The tie check reads float32 / float64 rows with numpy and other dtypes with torch: the same order,
    NaN rows included (a NaN compares false, so its row is re-sorted as a tied one)."""
    logprobs = torch.tensor([[-3.0, -1.0, -1.0, -4.0], [-0.5, -2.0, -1.0, -3.0], [-1.0, float("nan"), -2.0, -2.0]])
    ids, _ = sorted_topk(logprobs.to(dtype), 3)
    assert ids[:2].tolist() == [[1, 2, 0], [0, 2, 1]]
    reference, _ = sorted_topk(logprobs.double(), 3)
    assert ids[2].tolist() == reference[2].tolist()


def test_complement_logsumexp_is_accurate_when_the_row_holds_almost_all_mass() -> None:
    # p = (1 - 3e-9, 1e-9, 1e-9, 1e-9): log(1 - p0) by subtraction would lose everything in float32.
    probs = np.array([1 - 3e-9, 1e-9, 1e-9, 1e-9])
    logprobs = torch.tensor(np.log(probs), dtype=torch.float32)[None]
    tail = complement_logsumexp_(logprobs.clone(), torch.tensor([0]), torch.tensor([0]))
    assert float(tail[0]) == pytest.approx(np.log(3e-9), rel=1e-5)
    everything = complement_logsumexp_(logprobs.clone(), torch.zeros(4, dtype=torch.long), torch.arange(4))
    assert float(everything[0]) == float("-inf")


def test_postprocessing_groups_do_not_change_results(tiny_dir) -> None:
    from dualdistill_server.models import load_model

    tasks = _mixed_tasks(320)
    tasks.append(make_task(random_ids(np.random.default_rng(2), 30, 320), 5, mode="sample", seed=4))
    model = load_model("grouped", str(tiny_dir))
    whole = model.compute_logits(tasks)
    model.max_postprocess_rows = 20  # forces several groups, and the 61-row task into a group of its own
    assert len(model._groups(tasks)) > 3
    for a, b in zip(whole, model.compute_logits(tasks), strict=True):
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_array_equal(a.row_lengths, b.row_lengths)
        np.testing.assert_allclose(a.top_logprobs, b.top_logprobs, atol=1e-6)
        np.testing.assert_allclose(a.tail_logprobs, b.tail_logprobs, atol=1e-6)
        assert (a.counts is None) == (b.counts is None)
        if a.counts is not None:
            np.testing.assert_array_equal(a.counts, b.counts)


def test_unknown_mode_is_refused(tiny) -> None:
    with pytest.raises(ValueError, match="mode"):
        tiny.compute_logits([make_task([5, 6, 7], 1, mode="beam")])
