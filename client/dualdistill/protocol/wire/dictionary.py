"""Per-payload id dictionary: ids travel as keys, small numbers for the ids a response uses most.

The top-k sets of a response share most of their ids, and the frequent ones are the same few hundred
tokens. Each distinct id gets a
count class, and the key order follows from the classes:

    class(id) = floor(log2(number of entries carrying the id))     (0 for ids used once; 0..31)
    key order = distinct ids sorted by (class descending, id ascending)

The dictionary travels in key order: the number of ids in each class (classes 31 down to 0), then
each class's ids ascending as gaps that restart at every class. That is smaller than all distinct ids
as one run of gaps plus a class per id, and exact counts rank the keys no better than classes
(bench/wire_size.py --ablations); a decoder gets the key -> id table directly.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 32  # counts < 2**32
_DENSE_LIMIT = 1 << 22  # ids below this use an O(max id) lookup table instead of a sort


def count_class(counts: np.ndarray) -> np.ndarray:
    """(U,) counts >= 1 -> (U,) int64 floor(log2(count)) (exact: float64 exponent field; 0 -> -1023)."""
    c = np.asarray(counts).astype(np.float64)
    return (c.view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1023


def build(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) non-negative ids -> (key_to_id (U,) int64, classes of the keys (U,) int64, keys (N,) int32 or
    int64)."""
    ids = ids.astype(np.int64, copy=False)
    if ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    top = int(ids.max())
    if top < max(_DENSE_LIMIT, 4 * ids.size):
        all_counts = np.bincount(ids, minlength=top + 1)
        distinct = np.flatnonzero(all_counts)
        counts, inverse = all_counts[distinct], None
    else:
        distinct, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    classes = count_class(counts)
    order = np.lexsort((distinct, -classes))  # key -> position in `distinct`
    key_of = np.empty(len(distinct), dtype=np.int64)
    key_of[order] = np.arange(len(distinct))
    if inverse is None:
        table = np.zeros(top + 1, dtype=np.int32)  # keys < number of distinct int32 ids
        table[distinct] = key_of
        keys = table.take(ids)
    else:
        keys = key_of[inverse.reshape(-1)]
    return distinct[order], classes[order], keys


def to_streams(key_to_id: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids per class, classes 31 down to 0 (32,); gaps (U,): in each class run the first id as is,
    then id - previous id - 1)."""
    sizes = np.bincount(classes, minlength=NUM_CLASSES)[::-1]
    gaps = np.diff(key_to_id, prepend=-1) - 1
    starts = np.r_[0, np.cumsum(sizes)[:-1]][sizes > 0]
    gaps[starts] = key_to_id[starts]
    return sizes, gaps
