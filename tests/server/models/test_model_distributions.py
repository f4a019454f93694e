"""`sequence_distributions` on given logits rows against a plain per-row reference, bit for bit.

The post-processing has fast paths (no temperature copy at temperature 1, ties re-sorted only in the rows
that hold one, the tail's mask as a scatter when every task shares one k); the reference has none: per
row a full (value desc, id asc) sort with numpy and a logsumexp over the ids left out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualdistill_server.models.distributions import sequence_distributions, sorted_topk
from tests.server.models.helpers import make_task, random_ids

VOCAB = 97


def _reference(logits: torch.Tensor, tasks) -> list[tuple[np.ndarray, ...]]:
    """Per task: (ids (R, k), logprobs (R, k), token logprobs (R,), tails (R,)) from plain per-row code."""
    out, offset = [], 0
    for task in tasks:
        temperature = torch.tensor(task.params.temperature, dtype=torch.float32)  # as the server divides
        rows = logits[offset : offset + task.num_rows].float() / temperature
        logprobs = torch.log_softmax(rows, dim=-1)  # (R, V) float32
        offset += task.num_rows
        ids, values, tails = [], [], []
        for r, row in enumerate(logprobs.numpy()):
            order = np.lexsort((np.arange(VOCAB), -row))[: task.params.top_k]  # value desc, then id asc
            ids.append(order)
            values.append(row[order])
            masked = logprobs[r].clone()
            masked[torch.from_numpy(order)] = float("-inf")
            tails.append(float(torch.logsumexp(masked, dim=-1)))
        token = logprobs[torch.arange(task.num_rows), torch.from_numpy(task.token_ids[task.start :])]
        out.append((np.array(ids), np.array(values), token.numpy(), np.array(tails, dtype=np.float32)))
    return out


def _logits(rng: np.random.Generator, rows: int, ties: bool) -> torch.Tensor:
    """(rows, VOCAB) logits; with `ties` on a coarse grid, so most rows hold equal values."""
    values = rng.normal(0, 3, (rows, VOCAB)).astype(np.float32)
    return torch.from_numpy(np.round(values) if ties else values)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    "shape",
    [
        [(9, 2, 16, 1.0), (30, 5, 16, 1.0), (4, 1, 16, 1.0)],  # one k, temperature 1: the fast paths
        [(9, 2, 3, 1.0), (30, 5, 40, 0.7), (4, 1, VOCAB, 1.0)],  # mixed k and temperature, a full row
    ],
    ids=["one-k", "mixed"],
)
def test_topk_rows_equal_a_per_row_reference(shape, ties) -> None:
    rng = np.random.default_rng(3)
    tasks = [make_task(random_ids(rng, n, VOCAB), s, top_k=k, temperature=t) for n, s, k, t in shape]
    logits = _logits(rng, sum(t.num_rows for t in tasks), ties)
    results = sequence_distributions(logits.clone(), tasks)
    for result, (ids, values, token, tails) in zip(results, _reference(logits, tasks), strict=True):
        got_ids, got_values, _ = result.dense()
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_values, values)
        np.testing.assert_array_equal(result.token_logprobs, token)
        np.testing.assert_array_equal(result.tail_logprobs, tails)


def test_topk_rows_with_a_sampled_task_in_the_batch_equal_the_reference() -> None:
    rng = np.random.default_rng(5)
    tasks = [make_task(random_ids(rng, 12, VOCAB), 3, top_k=8), make_task(random_ids(rng, 10, VOCAB), 2, mode="sample"),
             make_task(random_ids(rng, 7, VOCAB), 1, top_k=8)]  # fmt: skip
    logits = _logits(rng, sum(t.num_rows for t in tasks), ties=True)
    results = sequence_distributions(logits.clone(), tasks)
    reference = _reference(logits, tasks)
    for b in (0, 2):
        got_ids, got_values, _ = results[b].dense()
        np.testing.assert_array_equal(got_ids, reference[b][0])
        np.testing.assert_array_equal(got_values, reference[b][1])
        np.testing.assert_array_equal(results[b].tail_logprobs, reference[b][3])
    assert results[1].counts is not None


@pytest.mark.parametrize("ks", [torch.tensor([4]), 4], ids=["per-row", "one-k"])
def test_sorted_topk_orders_nan_rows_like_a_stable_sort(ks) -> None:
    # NaN is no tie to `==`; such rows still get the stable (value desc, id asc) order torch.sort gives.
    logprobs = torch.tensor([[-1.0, float("nan"), -0.5, float("nan"), -2.0]])
    ids, _ = sorted_topk(logprobs, ks)
    expected = torch.sort(logprobs[0], descending=True, stable=True).indices[:4]
    assert ids[0].tolist() == expected.tolist()


@pytest.mark.parametrize("ks", ["one-k", "per-row"])
def test_sorted_topk_packed_key_sort_equals_a_stable_sort(ks) -> None:
    """float32 rows on the CPU take numpy's sort of packed (value, id) keys; other dtypes torch.topk's sorted
    candidates. Both equal a plain stable sort per row, on rows full of ties, -inf, 0.0 next to -0.0, and
    a k at the vocabulary's size."""
    rng = np.random.default_rng(11)
    rows = np.round(rng.normal(0, 2, (64, VOCAB))).astype(np.float32) / 2  # a coarse grid: ties in every row
    rows[::5, : VOCAB // 2] = -np.inf
    rows[3, [4, 9, 20]] = [0.0, -0.0, 0.0]
    logprobs = torch.from_numpy(rows)
    k = rng.integers(1, VOCAB + 1, len(rows))
    k[:4] = [1, 2, VOCAB - 1, VOCAB]
    chosen = int(k[0] + 40) if ks == "one-k" else torch.from_numpy(k)
    per_row = [chosen] * len(rows) if ks == "one-k" else k.tolist()
    ids, values = sorted_topk(logprobs, chosen)
    ids64, values64 = sorted_topk(logprobs.double(), chosen)
    for r, row in enumerate(rows):
        expected = torch.sort(torch.from_numpy(row), descending=True, stable=True).indices[: per_row[r]]
        assert ids[r, : per_row[r]].tolist() == expected.tolist() == ids64[r, : per_row[r]].tolist()
        got = values[r, : per_row[r]].numpy()
        assert got.view(np.int32).tolist() == row[expected.numpy()].view(np.int32).tolist()  # the same bits
        np.testing.assert_array_equal(values64[r, : per_row[r]].numpy(), got.astype(np.float64))
