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


def sort_within_rows(
    row_lengths: np.ndarray,
    primary: np.ndarray,
    primary_span: int,
    secondary: np.ndarray,
    secondary_span: int,
    with_order: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each row's entries sorted by (primary, secondary) ascending, rows in place:
    (primary sorted (N,), secondary sorted (N,), both uint32 or uint64; the permutation (N,) int64 or None).

    Keys are non-negative ints below their spans. Both keys (and, `with_order`, the entry's position as
    the last key, so equal pairs keep their order) are packed into one unsigned integer per entry and
    sorted as values: a row-wise sort of 32- or 64-bit values (a ragged response adds the row as the
    first key and sorts once), several times cheaper than an argsort and the gathers after it. Keys
    too wide to pack fall back to `within_row_order`.
    """
    n, rows = len(primary), len(row_lengths)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint32)
        return empty, empty, (np.zeros(0, dtype=np.int64) if with_order else None)
    longest = int(row_lengths.max())
    uniform = rows > 0 and n == rows * longest
    pos_bits = (longest - 1).bit_length() if with_order else 0
    row_bits = 0 if uniform else max(rows - 1, 0).bit_length()
    s_bits = max(secondary_span - 1, 0).bit_length()
    p_bits = max(primary_span - 1, 0).bit_length()
    width = row_bits + p_bits + s_bits + pos_bits
    if width > 64:
        order = within_row_order(row_lengths, primary, secondary, secondary_span)
        return primary[order].astype(np.uint64), secondary[order].astype(np.uint64), order
    dtype = np.uint32 if width <= 32 else np.uint64
    packed = primary.astype(dtype)
    packed <<= dtype(s_bits + pos_bits)
    if pos_bits:
        packed |= secondary.astype(dtype) << dtype(pos_bits)
    else:  # int32 keys (dictionary.build's) are OR-ed in place as uint32; others are cast first
        np.bitwise_or(packed, secondary.view(np.uint32) if secondary.dtype == np.int32 else secondary.astype(dtype),
                      out=packed)  # fmt: skip
    if uniform:  # (R, k) rows: positions broadcast along a row, one sort per row
        if pos_bits:
            packed.reshape(rows, longest)[:] |= np.arange(longest, dtype=dtype)
        packed = np.sort(packed.reshape(rows, longest), axis=1).reshape(-1)
        first = np.arange(0, n, max(longest, 1), dtype=np.int64)
    else:
        first = row_offsets(row_lengths)[:-1]
        if pos_bits:
            packed |= (np.arange(n, dtype=np.int64) - np.repeat(first, row_lengths)).astype(dtype)
        packed |= np.repeat(np.arange(rows, dtype=dtype), row_lengths) << dtype(p_bits + s_bits + pos_bits)
        packed = np.sort(packed)
    order = None
    if with_order:
        order = (packed & dtype((1 << pos_bits) - 1)).astype(np.int64) + np.repeat(first, row_lengths)
    sorted_secondary = (packed >> dtype(pos_bits) if pos_bits else packed) & dtype((1 << s_bits) - 1)
    sorted_primary = packed >> dtype(s_bits + pos_bits)
    if not uniform:
        sorted_primary &= dtype((1 << p_bits) - 1)  # drop the row
    return sorted_primary, sorted_secondary, order
