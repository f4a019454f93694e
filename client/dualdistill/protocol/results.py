"""`SequenceLogits`: one sequence's teacher distributions, the unit the service computes, caches and ships.

Layout (the same as `SequenceResult` in protos/dualdistill/v1/teacher.proto): one row per position
i in [start, T); row r holds `row_lengths[r]` entries, rows concatenated ("flat ragged"), each row's
entries sorted by logprob descending. In "topk" mode every row has k entries; in "sample" mode a row holds
the unique sampled ids and `counts` says how often each was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SequenceLogits:
    row_lengths: np.ndarray  # (R,) int32, R = T - start
    top_ids: np.ndarray  # (N,) int32, N = row_lengths.sum()
    top_logprobs: np.ndarray  # (N,) float32, log p(id | x[:i]) at the server's temperature
    token_logprobs: np.ndarray  # (R,) float32, log p(x[i] | x[:i]) of the actual next token
    tail_logprobs: np.ndarray  # (R,) float32, log(1 - sum of the row's probabilities); -inf if none left
    counts: np.ndarray | None = None  # (N,) int32, "sample" mode only; each row sums to `samples`
    # (R,) int32 rank of the actual next token, 1 + #{ids with a higher logprob} counting ties as ahead
    # (vLLM's rank); computed only when asked for (the OpenAI dialect's prompt_logprobs), not on the wire.
    token_ranks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.row_lengths = np.ascontiguousarray(self.row_lengths, dtype=np.int32)
        self.top_ids = np.ascontiguousarray(self.top_ids, dtype=np.int32)
        self.top_logprobs = np.ascontiguousarray(self.top_logprobs, dtype=np.float32)
        self.token_logprobs = np.ascontiguousarray(self.token_logprobs, dtype=np.float32)
        self.tail_logprobs = np.ascontiguousarray(self.tail_logprobs, dtype=np.float32)
        if self.counts is not None:
            self.counts = np.ascontiguousarray(self.counts, dtype=np.int32)
        if self.token_ranks is not None:
            self.token_ranks = np.ascontiguousarray(self.token_ranks, dtype=np.int32)
        n_rows, n_entries = len(self.row_lengths), int(self.row_lengths.sum())
        if not (len(self.top_ids) == len(self.top_logprobs) == n_entries):
            raise ValueError(
                f"top_ids ({len(self.top_ids)}) and top_logprobs ({len(self.top_logprobs)}) must hold "
                f"sum(row_lengths) = {n_entries} entries"
            )
        if not (len(self.token_logprobs) == len(self.tail_logprobs) == n_rows):
            raise ValueError(f"token_logprobs and tail_logprobs must hold one value per row ({n_rows})")
        if self.counts is not None and len(self.counts) != n_entries:
            raise ValueError(f"counts must hold sum(row_lengths) = {n_entries} entries")
        if self.token_ranks is not None and len(self.token_ranks) != n_rows:
            raise ValueError(f"token_ranks must hold one value per row ({n_rows})")

    @property
    def num_rows(self) -> int:
        return len(self.row_lengths)

    @property
    def row_offsets(self) -> np.ndarray:
        """(R + 1,) int64 offsets: row r is entries [offsets[r], offsets[r + 1])."""
        out = np.zeros(len(self.row_lengths) + 1, dtype=np.int64)
        np.cumsum(self.row_lengths, out=out[1:])
        return out

    @classmethod
    def from_dense(
        cls,
        top_ids: np.ndarray,
        top_logprobs: np.ndarray,
        token_logprobs: np.ndarray,
        tail_logprobs: np.ndarray,
    ) -> SequenceLogits:
        """From (R, k) arrays of a "topk" result."""
        rows, k = np.shape(top_ids)
        return cls(
            row_lengths=np.full(rows, k, dtype=np.int32),
            top_ids=np.reshape(top_ids, -1),
            top_logprobs=np.reshape(top_logprobs, -1),
            token_logprobs=token_logprobs,
            tail_logprobs=tail_logprobs,
        )

    def dense(self, k: int | None = None, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows padded to width k (default: the longest row): (ids, logprobs, counts), each (R, k).

        Padding entries get id `pad_id`, logprob -inf and count 0, so they carry no probability mass.
        """
        width = int(self.row_lengths.max(initial=0)) if k is None else k
        rows = self.num_rows
        ids = np.full((rows, width), pad_id, dtype=np.int64)
        logprobs = np.full((rows, width), -np.inf, dtype=np.float32)
        counts = None if self.counts is None else np.zeros((rows, width), dtype=np.int32)
        if rows == 0 or width == 0:
            return ids, logprobs, counts
        row_index = np.repeat(np.arange(rows), self.row_lengths)
        col_index = np.arange(len(self.top_ids)) - np.repeat(self.row_offsets[:-1], self.row_lengths)
        keep = col_index < width
        ids[row_index[keep], col_index[keep]] = self.top_ids[keep]
        logprobs[row_index[keep], col_index[keep]] = self.top_logprobs[keep]
        if counts is not None:
            counts[row_index[keep], col_index[keep]] = self.counts[keep]
        return ids, logprobs, counts

    def equals(self, other: SequenceLogits) -> bool:
        """Exact equality of every array (NaN-free data; -inf compares equal)."""
        same = [
            np.array_equal(self.row_lengths, other.row_lengths),
            np.array_equal(self.top_ids, other.top_ids),
            np.array_equal(self.top_logprobs, other.top_logprobs),
            np.array_equal(self.token_logprobs, other.token_logprobs),
            np.array_equal(self.tail_logprobs, other.tail_logprobs),
            (self.counts is None) == (other.counts is None),
        ]
        if self.counts is not None and other.counts is not None:
            same.append(np.array_equal(self.counts, other.counts))
        return all(same)
