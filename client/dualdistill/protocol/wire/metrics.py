"""Quality and size measures of a wire payload (used by bench/wire_size.py and tests)."""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.wire.ragged import within_row_order


def _kl_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Elementwise p * ln(p / q) - p + q (>= 0; 0 at p == q), with 0 * ln 0 = 0 and p > 0 = q -> inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        term = p * (np.log(p) - np.log(q)) - p + q
    term = np.where(p == 0, q, term)
    return np.where((q == 0) & (p > 0), np.inf, term)


def kl_exact_vs_decoded(exact: SequenceLogits, decoded: SequenceLogits) -> np.ndarray:
    """(R,) KL(exact || decoded) in nats per row over k + 1 buckets: the row's entries plus the tail.

    KL_r = sum_b [ P_b ln(P_b / Q_b) - P_b + Q_b ],   P_b = exp(exact logprob), Q_b = exp(decoded logprob),
    b over the row's ids (matched by id, so any order within a row is fine) and the tail bucket
    (exp(tail_logprobs)). This is the ordinary KL when both sides sum to 1 and, unlike it, is never
    negative when a decoder's buckets do not sum exactly to 1. Raises ValueError if a row's id sets differ.
    """
    if not np.array_equal(exact.row_lengths, decoded.row_lengths):
        raise ValueError("exact and decoded have different row lengths")
    rows = exact.num_rows
    zero = np.zeros(exact.top_ids.size, dtype=np.int64)
    order_p = within_row_order(exact.row_lengths, exact.top_ids.astype(np.int64), zero, 1)
    order_q = within_row_order(decoded.row_lengths, decoded.top_ids.astype(np.int64), zero, 1)
    if not np.array_equal(exact.top_ids[order_p], decoded.top_ids[order_q]):
        raise ValueError("exact and decoded rows hold different ids")
    p = np.exp(exact.top_logprobs[order_p].astype(np.float64))
    q = np.exp(decoded.top_logprobs[order_q].astype(np.float64))
    row = np.repeat(np.arange(rows), exact.row_lengths)
    per_row = np.bincount(row, weights=_kl_terms(p, q), minlength=rows)
    tail_p = np.exp(exact.tail_logprobs.astype(np.float64))
    tail_q = np.exp(decoded.tail_logprobs.astype(np.float64))
    return per_row + _kl_terms(tail_p, tail_q)


def bytes_per_position(payload: bytes, results: list[SequenceLogits]) -> float:
    """len(payload) / number of positions (rows) over all sequences of the response."""
    positions = sum(r.num_rows for r in results)
    if positions == 0:
        raise ValueError("results hold no positions")
    return len(payload) / positions
