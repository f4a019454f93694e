"""Vectorised helpers for flat-ragged rows (row r = entries [offsets[r], offsets[r + 1]))."""

from __future__ import annotations

import numpy as np


def row_offsets(row_lengths: np.ndarray) -> np.ndarray:
    """(R,) lengths -> (R + 1,) int64 offsets."""
    out = np.zeros(len(row_lengths) + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=out[1:])
    return out


def row_starts(row_lengths: np.ndarray, n_entries: int) -> np.ndarray:
    """(N,) bool, True at the first entry of every non-empty row."""
    mask = np.zeros(n_entries, dtype=bool)
    mask[row_offsets(row_lengths)[:-1][row_lengths > 0]] = True
    return mask


def segment_cumsum(increments: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum that restarts at every True of `starts` (starts[0] must be True).

    out[e] = sum(increments[s..e]) where s is the last start at or before e. Shapes (N,) -> (N,).
    """
    total = np.cumsum(increments)
    segment = np.cumsum(starts) - 1
    base = (total - increments)[starts]
    return total - base[segment]


def within_row_order(
    row_lengths: np.ndarray, primary: np.ndarray, secondary: np.ndarray, secondary_span: int
) -> np.ndarray:
    """(N,) permutation sorting each row's entries by (primary, secondary) ascending; rows stay in place.

    Both keys are non-negative int64 with secondary < secondary_span.
    """
    n, rows = len(primary), len(row_lengths)
    within = primary * secondary_span + secondary
    if rows and n == rows * int(row_lengths[0]) and np.all(row_lengths == row_lengths[0]):
        k = int(row_lengths[0])  # uniform rows ("topk" mode): a row-wise sort of an (R, k) view
        order = np.argsort(within.reshape(rows, k), axis=1) if k else np.zeros((rows, 0), dtype=np.int64)
        return (order + (np.arange(rows, dtype=np.int64) * k)[:, None]).reshape(-1)
    span = int(within.max(initial=0)) + 1
    row = np.repeat(np.arange(rows, dtype=np.int64), row_lengths)
    if rows * span < (1 << 62):
        return np.argsort(row * span + within)
    return np.lexsort((within, row))


def row_blocks(row_lengths: np.ndarray, block_entries: int) -> list[tuple[int, int]]:
    """Split rows into consecutive blocks of about `block_entries` entries: [(first_row, end_row), ...].

    Row-local work runs block by block so its temporaries stay cache-sized (a loop per block, not per
    row); a row longer than `block_entries` is a block of its own. Always at least one block.
    """
    offsets = row_offsets(row_lengths)
    targets = np.arange(block_entries, offsets[-1], block_entries)
    cuts = dict.fromkeys(np.searchsorted(offsets, targets, side="right").tolist())  # sorted, deduplicated
    bounds = [0, *[c for c in cuts if 0 < c < len(row_lengths)], len(row_lengths)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
