"""Entry coding of the lossy variant: rows as tie groups of quantized levels, ids as keys within groups.

Each row is re-ordered by (level descending, key ascending) and cut into tie groups (runs of equal
level). A row with groups g = 1..G of levels L_1 > ... > L_G and sizes m_1..m_G is sent as

    groups_per_row  G                               (one per row; 0 for an empty row)
    first_levels    L_1                             (one per non-empty row)
    group_steps     one byte per g < G: 8 * min(a, 7) + min(b, 7) with a = m_g - 1 (the last size
                    follows from the row length) and b = L_g - L_{g+1} - 1
    size_overflow   a - 7 for every step with min(a, 7) == 7, in order
    drop_overflow   b - 7 for every step with min(b, 7) == 7, in order
    key_codes       per entry: the group's first key as is, then key - previous key - 1

Run lengths instead of per-entry level differences matter: 75% of neighbouring entries share a
level at k=128 on SmolLM2, and a zstd Huffman code spends at least one bit on each of those zeros.
A group's size and the drop to the next group travel as one symbol because they are correlated (big
groups sit at the low, densely packed levels): 11% smaller than two separate streams
(bench/wire_size.py --ablations). Listing a group by key loses nothing the lossy variant keeps (its
entries decode to the same logprob) and turns its keys into small sorted gaps. Decoded rows are
sorted by decoded logprob descending, ties by key.
"""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.wire import kernels
from dualdistill.protocol.wire.container import variant_offsets
from dualdistill.protocol.wire.errors import WireFormatError
from dualdistill.protocol.wire.quantize import dequantize, quantize
from dualdistill.protocol.wire.ragged import row_offsets, row_starts, segment_cumsum, sort_within_rows

# The variant's own streams in payload order: integer stream pairs ("uint") or plain bytes.
STREAMS = (
    ("groups_per_row", "uint"),
    ("first_levels", "uint"),
    ("group_steps", "bytes"),
    ("size_overflow", "uint"),
    ("drop_overflow", "uint"),
)
OFFSETS = variant_offsets(STREAMS)  # stream index of each, as the payload lays them out
_KEY_MAX = (1 << 31) - 1  # keys index distinct int32 ids
_CAP = 7  # a step symbol holds sizes and drops below this; larger ones continue in an overflow stream
REPEATED_IDS = "top_ids repeat an id within a row; the lossy variant needs distinct ids per row"
_SIZES_OVERRUN = "tie-group sizes exceed the row length"
_LEVELS_BELOW_ZERO = "level drops exceed the row's first level"


def encode_entries(
    row_lengths: np.ndarray, keys: np.ndarray, logprobs: np.ndarray, levels: int, n_dict: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows -> (permutation (N,), key_codes (N,), {name in STREAMS: values}): `encode_levels` of the
    logprobs' levels at M = levels, with the permutation."""
    return encode_levels(row_lengths, keys, quantize(logprobs, levels), levels, n_dict, with_order=True)


def encode_levels(
    row_lengths: np.ndarray, keys: np.ndarray, level: np.ndarray, levels: int, n_dict: int, with_order: bool
) -> tuple[np.ndarray | None, np.ndarray, dict[str, np.ndarray]]:
    """Rows of (key, level) entries -> (the permutation into the sent order (N,) if `with_order`, else
    None; key_codes (N,); {name in STREAMS: values}). Shapes: (R,) row_lengths, (N,) keys < n_dict and
    levels < `levels`. Raises ValueError if a row holds one key twice at one level (ids repeated in a row).
    """
    n = len(keys)
    # Sent order: level descending (= rank ascending), key ascending. Unsigned from here on.
    rank, keys, perm = sort_within_rows(row_lengths, levels - 1 - level, levels, keys, max(n_dict, 1), with_order)
    if kernels.enabled():  # the tie groups in one compiled pass over the sorted rows (kernels.py)
        codes, groups, sizes, first_rank, rank_steps, ok = kernels.tie_groups(
            np.ascontiguousarray(row_lengths, dtype=np.int64), rank, keys
        )
        if not ok:
            raise ValueError(REPEATED_IDS)
        values = {"groups_per_row": groups, "group_sizes": sizes, "first_levels": (levels - 1) - first_rank,
                  "level_drops": rank_steps}  # fmt: skip
        return perm, codes, values
    starts = row_starts(row_lengths, n)
    in_group = np.empty(n, dtype=bool)  # True at every group's first entry
    in_group[:1] = True
    np.not_equal(rank[1:], rank[:-1], out=in_group[1:])
    in_group |= starts
    group_at = np.flatnonzero(in_group)
    first_of_row = starts[group_at]
    inner = ~first_of_row[1:]  # groups (after the first) that continue a row
    group_rank = rank[group_at]
    # codes = key - (previous key + 1) inside a group, the key itself at a group's start
    before = np.empty_like(keys)
    before[:1] = 0
    np.add(keys[:-1], 1, out=before[1:])
    before *= ~in_group
    codes = keys - before
    # Keys ascend within a group; a repeated key wraps below zero, i.e. above every key (< 2**31).
    if n and int(codes.max()) > _KEY_MAX:
        raise ValueError(REPEATED_IDS)
    values = {
        "groups_per_row": _count_per_row(row_lengths, in_group),
        "group_sizes": (np.diff(group_at) - 1)[inner],
        "first_levels": (levels - 1) - group_rank[first_of_row],
        "level_drops": (np.diff(group_rank) - 1)[inner],
    }
    return perm, codes, values


def _count_per_row(row_lengths: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(R,) int64 number of True entries of `mask` (N,) in each row."""
    rows, n = len(row_lengths), len(mask)
    if rows and n == rows * int(row_lengths.max()):  # uniform rows (all as long as the longest)
        return np.count_nonzero(mask.reshape(rows, -1), axis=1) if n else np.zeros(rows, dtype=np.int64)
    out = np.zeros(rows, dtype=np.int64)
    nonempty = row_lengths > 0
    if n:
        out[nonempty] = np.add.reduceat(mask, row_offsets(row_lengths)[:-1][nonempty], dtype=np.int64)
    return out


def split_steps(values: dict[str, np.ndarray]) -> dict[str, np.ndarray | bytes]:
    """group_sizes + level_drops -> group_steps (bytes), size_overflow, drop_overflow."""
    a, b = values["group_sizes"], values["level_drops"]
    steps = np.minimum(a, _CAP).astype(np.uint8)
    steps <<= 3
    steps |= np.minimum(b, _CAP).astype(np.uint8)
    return {
        "group_steps": steps.tobytes(),
        "size_overflow": a[a >= _CAP] - _CAP,
        "drop_overflow": b[b >= _CAP] - _CAP,
    }


def overflow_counts(steps: bytes) -> tuple[np.ndarray, int, int]:
    """Validated step symbols (V,) uint8 and how many size / drop overflow values follow."""
    s = np.frombuffer(steps, dtype=np.uint8)
    if s.size and int(s.max()) >= 8 * 8:
        raise WireFormatError(f"group step symbol {int(s.max())} out of range (< 64)")
    return s, int(np.count_nonzero(s >> 3 == _CAP)), int(np.count_nonzero(s & 7 == _CAP))


def join_steps(
    steps: np.ndarray, size_overflow: np.ndarray, drop_overflow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `split_steps`: (group_sizes, level_drops) as int64."""
    a, b = (steps >> 3).astype(np.int64), (steps & 7).astype(np.int64)
    a[a == _CAP] += size_overflow.astype(np.int64)
    b[b == _CAP] += drop_overflow.astype(np.int64)
    return a, b


def decode_entries(
    row_lengths: np.ndarray, codes: np.ndarray, values: dict[str, np.ndarray], levels: int, n_dict: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_entries` for one block (in the sent order): (keys (N,) int64, logprobs (N,) float32).

    `values["groups_per_row"]` must already be validated (`check_groups`); the other arrays hold
    sum(groups) - nonempty rows (sizes, drops) and nonempty rows (first levels) values.
    """
    n = len(codes)
    groups = values["groups_per_row"].astype(np.int64)
    n_groups = int(groups.sum())
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    first = values["first_levels"].astype(np.int64)
    if int(first.max()) >= levels:
        raise WireFormatError(f"level {int(first.max())} out of range (< {levels})")
    first_of_row = row_starts(groups, n_groups)
    last_of_row = np.r_[first_of_row[1:], True]
    # Sizes of all but each row's last group; the last one is what is left of the row.
    size = np.zeros(n_groups, dtype=np.int64)
    size[~last_of_row] = values["group_sizes"].astype(np.int64) + 1
    taken = segment_cumsum(size, first_of_row)[last_of_row]
    size[last_of_row] = row_lengths[row_lengths > 0] - taken
    if int(size[last_of_row].min()) < 1:
        raise WireFormatError(_SIZES_OVERRUN)
    step = np.empty(n_groups, dtype=np.int64)
    step[first_of_row] = first
    step[~first_of_row] = -(values["level_drops"].astype(np.int64) + 1)
    group_level = segment_cumsum(step, first_of_row)
    if int(group_level.min()) < 0:
        raise WireFormatError(_LEVELS_BELOW_ZERO)
    # keys: a group's first key is its code, each next one the previous + code + 1. One cumsum over the
    # entries: increments code + 1, except at a group's first entry, where the increment is the code
    # minus the previous group's last key (the sum of that group's increments, taken before the change).
    group_start = np.cumsum(size) - size
    increment = codes.astype(np.int64)
    increment += 1
    increment[group_start] -= 1
    if n_groups > 1:
        last_key = np.add.reduceat(increment, group_start)
        increment[group_start[1:]] -= last_key[:-1]
    keys = np.cumsum(increment)
    if int(keys.max()) >= n_dict:
        raise WireFormatError(f"key {int(keys.max())} out of range (< {n_dict})")
    # one logprob per group (the levels' bin centres), then repeated over the group's entries
    return keys, np.repeat(dequantize(group_level, levels), size)


def check_groups(row_lengths: np.ndarray, groups: np.ndarray) -> None:
    """Every non-empty row has 1..row_length groups, every empty row none."""
    if not np.array_equal(groups > 0, row_lengths > 0) or np.any(groups > row_lengths):
        raise WireFormatError("groups per row inconsistent with the row lengths")
