"""Compiled loops (numba) for the codec's per-field work, where numba is installed.

    encode_fields / decode_fields   intcode.py's bucket code: symbols + bit fields of varying width
    tie_groups                      lossy.py's tie groups of sorted rows
    level_totals                    quantize.py's levels at one M with their per-level mass and count
    encode_lossy                    codec.encode's 23 lossy streams after numpy's row sort, in one call
    dictionary_count / _keys        dictionary.build without a per-call array as long as the vocabulary
    decode_lossy                    codec.decode of a whole lossy payload: every stream's integers, the
                                    dictionary, the tie groups' inverse and every check, in one call

numpy does this work in a fixed series of whole-array steps (offsets, words, shifts, masks, cumulative
sums: ~40 calls per integer stream), which on a small payload cost more than the data and on a large one
make ~20 passes over it; a compiled loop reads or writes each field once. A small payload still cost a
few calls per stream that way (decoding 56 rows of 128 entries: 0.6 ms, bench/codec_ab.py); the
whole-payload loops make it one call each way. The loops produce the same values and bytes as the numpy
code (every codec test runs on both paths: tests/fixtures/codec_paths.py), so a payload does not depend
on which one made or read it.

    DUALDISTILL_WIRE_KERNELS=numpy    never use them
    DUALDISTILL_WIRE_KERNELS=numba    require them (an ImportError at the first call without numba)
    unset / auto                      use them when numba is installed (the server extra installs it)

numba is imported and the loops compiled at the first call of one (all of them: about 15 s on 2 slow cores,
most of it the whole-payload decoder; `warm_up` does it before a server is ready); the machine code is
cached on disk by numba, next to this module or in NUMBA_CACHE_DIR, so later processes load it in under
a second (docs/wire-format.md §9).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import numpy as np

from dualdistill.protocol.wire.dictionary import NUM_CLASSES

ENV = "DUALDISTILL_WIRE_KERNELS"
_CHOICES = ("auto", "numba", "numpy")
log = logging.getLogger(__name__)


def _choice() -> str:
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    return choice


def _enabled() -> bool:
    """Whether the codec takes the compiled path: DUALDISTILL_WIRE_KERNELS, and (auto) whether numba
    imports here. numba is imported now (about half a second), at the codec's first call."""
    choice = _choice()
    if choice == "numpy":
        return False
    try:
        import numba  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - absent, or a build that does not match this numpy
        if choice == "numba":
            raise ImportError(f"{ENV}=numba but numba does not import: {exc}") from exc
        if importlib.util.find_spec("numba") is not None:
            log.warning("numba is installed but does not import (%s); the wire codec runs on numpy alone", exc)
        return False
    guard_llvmlite_for_vllm()
    return True


ENABLED: bool | None = None  # decided at the first call (`enabled`); tests set it to pick a path


def enabled() -> bool:
    global ENABLED
    if ENABLED is None:
        ENABLED = _enabled()
    return ENABLED


def guard_llvmlite_for_vllm() -> None:
    """Let vLLM's CPU platform start an engine in a process that has loaded numba.

    When it starts an engine without Triton, vLLM rebinds some kernels by scanning every attribute of
    every loaded module with `hasattr(value, "__dict__")` and then `vars(value).get(...)`. llvmlite's
    library object (`llvmlite.binding.ffi.lib`, loaded with numba) answers every unknown attribute,
    `__dict__` included, with a wrapper of the C function of that name, so the scan fails with
    "AttributeError: '_lib_fn_wrapper' object has no attribute 'get'" and the engine does not start. An
    empty dict in the object's table of bound names answers `__dict__` as the scan expects; llvmlite
    itself never asks for it. Called when this module imports numba and before every vLLM engine start.
    """
    ffi = sys.modules.get("llvmlite.binding.ffi")
    table = getattr(getattr(ffi, "lib", None), "_fntab", None)
    if isinstance(table, dict) and not isinstance(table.get("__dict__"), dict):
        table["__dict__"] = {}  # replaces the wrapper an earlier lookup of `__dict__` cached there


class _Lazy:
    """The loop named `name`, compiled by numba on the first call of any loop (`_compile_loops`)."""

    def __init__(self, name: str) -> None:
        self.name, self.compiled = name, None

    def __call__(self, *args):
        if self.compiled is None:
            _compile_loops()
            self.compiled = globals()[self.name]
        return self.compiled(*args)


def _compile_loops() -> None:
    """Rebind every loop's module name to its numba dispatcher (which compiles per argument types on first
    call), all at once: a loop that calls another finds the dispatcher under the callee's name. Machine
    code is cached on disk where numba can write (else compiled in memory each process). The loops that
    call one another live in this one file because numba's cache notices edits to a function's own file
    only."""
    import numba

    for name in _LOOPS:
        fn = globals()[name]
        if isinstance(fn, numba.core.dispatcher.Dispatcher):
            continue
        try:
            globals()[name] = numba.njit(cache=True, nogil=True)(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available" (read-only)
            log.warning("numba cannot cache %s here (%s); compiling it in memory", name, exc)
            globals()[name] = numba.njit(nogil=True)(fn)


_INT32_MAX = (1 << 31) - 1
_STEP_CAP = 7  # lossy._CAP

# Status codes of `_decode_lossy` (0: valid), with the message each stands for; a, b, c: its numbers.
DECODE_ERRORS = {
    1: "stream {a} declares {b} bytes, the header implies {c}",
    2: "integer symbol {a} out of range (< 128)",
    3: "extra-bit stream has non-zero padding bits",
    4: "rows per sequence do not add up to the header's row count",
    5: "row length out of int32 range",
    6: "row lengths do not add up to the header's entry count",
    7: "ids per count class do not add up to the dictionary size",
    8: "dictionary ids out of int32 range or repeated",
    9: "key code {a} out of range (< {b})",
    10: "count out of int32 range",
    11: "groups per row inconsistent with the row lengths",
    12: "group step symbol {a} out of range (< 64)",
    13: "level {a} out of range (< {b})",
    14: "tie-group sizes exceed the row length",
    15: "level drops exceed the row's first level",
    16: "key {a} out of range (< {b})",
    17: "dictionary count classes do not match the keys",
}



# ---- the loops (plain Python as written; numba compiles them) ---------------------------------------


def _encode(values):
    """(V,) int64 -> (symbols (V,) uint8, extra bits packed MSB first and zero-padded (uint8), V); when a
    value is outside [0, 2**32): (empty, empty, -(i + 1)) for the first such value i."""
    n = values.shape[0]
    symbols = np.empty(n, dtype=np.uint8)
    out = np.empty(4 * n + 8, dtype=np.uint8)  # at most 29 extra bits per value
    at, done = _encode_into(values, symbols, out)
    if done < n:
        return symbols[:0], out[:0], done
    return symbols, out[:at], n


def _encode_into(values, symbols, out):
    """`_encode` into given arrays: symbols (V,) and out (>= 4V + 8 bytes) -> (extra bytes written, V), or
    (0, -(i + 1)) for the first value i outside [0, 2**32)."""
    n = values.shape[0]
    acc = np.uint64(0)
    held = 0  # bits of acc not written yet (< 8 between values)
    at = 0
    for i in range(n):
        v = values[i]
        if v < 16:
            if v < 0:
                return 0, -(i + 1)
            symbols[i] = v
            continue
        if v >= 4294967296:
            return 0, -(i + 1)
        top = 4  # floor(log2 v): v >= 16
        while v >> (top + 1):
            top += 1
        nbits = top - 2
        symbols[i] = 16 + 4 * (top - 4) + ((v >> nbits) & 3)
        acc = (acc << np.uint64(nbits)) | np.uint64(v & ((1 << nbits) - 1))
        held += nbits
        while held >= 8:
            held -= 8
            out[at] = np.uint8((acc >> np.uint64(held)) & np.uint64(255))
            at += 1
    if held > 0:
        out[at] = np.uint8((acc << np.uint64(8 - held)) & np.uint64(255))
        at += 1
    return at, n


def _decode(symbols, extra):
    """Inverse of `_encode` given the validated extra-bit bytes (uint8) of the symbols (V,): (V,) uint64."""
    out = np.empty(symbols.shape[0], dtype=np.uint64)
    _read_fields(symbols, extra, out)
    return out


def _read_fields(symbols, extra, out):
    """The values of `symbols` (V,) with their extra bits read from `extra` (validated: as many bytes as the
    symbols' fields need) into `out` (V,)."""
    acc, held, at = np.uint64(0), 0, 0
    for i in range(symbols.shape[0]):
        symbol = np.int64(symbols[i])
        if symbol < 16:
            out[i] = symbol
            continue
        width = symbol // 4 - 2  # floor(log2 value) - 2 (intcode.py)
        while held < width:
            acc = (acc << np.uint64(8)) | np.uint64(extra[at])
            at += 1
            held += 8
        held -= width
        field = (acc >> np.uint64(held)) & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))
        out[i] = (np.uint64(4 + (symbol & 3)) << np.uint64(width)) | field


def _groups(row_lengths, rank, keys):
    """Rows sorted by (rank, key) -> (codes (N,), groups per row (R,), size - 1 and rank step - 1 of every
    group after a row's first (G - R',), first rank of every non-empty row (R',), ok): lossy.py's tie
    groups. ok is False if a row holds one key twice at one rank (then the rest is undefined)."""
    n, rows = keys.shape[0], row_lengths.shape[0]
    codes, groups = np.empty(n, dtype=np.int64), np.empty(rows, dtype=np.int64)
    sizes, drops, first = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(rows, dtype=np.int64)
    inner, nonempty, ok = _groups_into(row_lengths, rank, keys, codes, groups, sizes, drops, first)
    return codes, groups, sizes[:inner], first[:nonempty], drops[:inner], ok


def _groups_into(row_lengths, rank, keys, codes, groups, sizes, drops, first):
    """`_groups` into given arrays (codes, sizes, drops (>= N,), groups, first (>= R,)) -> (number of inner
    groups, of non-empty rows, ok)."""
    inner, nonempty, e0 = 0, 0, 0
    for r in range(row_lengths.shape[0]):
        e1 = e0 + row_lengths[r]
        groups[r] = 0
        if e1 == e0:
            continue
        start, previous_rank, previous_key = e0, np.int64(rank[e0]), np.int64(keys[e0])
        codes[e0] = previous_key
        first[nonempty] = previous_rank
        nonempty += 1
        count = 1
        for i in range(e0 + 1, e1):
            this_rank, key = np.int64(rank[i]), np.int64(keys[i])
            if this_rank != previous_rank:
                sizes[inner] = i - start - 1
                drops[inner] = this_rank - previous_rank - 1
                inner += 1
                count += 1
                start = i
                codes[i] = key
            elif key <= previous_key:
                return inner, nonempty, False
            else:
                codes[i] = key - previous_key - 1
            previous_rank, previous_key = this_rank, key
        groups[r] = count
        e0 = e1
    return inner, nonempty, True


def _entries(row_lengths, codes, groups, sizes, first, drops, keys, level, group_size):
    """Inverse of `_groups` (in the sent order) into keys (N,) and level, group_size (>= G,) of every group,
    with first = the rows' first levels and drops = level drops - 1: (G, status), status 0, or 1 if the
    groups overrun a row, 2 if a level drops below 0. Inputs validated as _decode_lossy validates them
    (groups per row checked, array lengths consistent)."""
    rows = row_lengths.shape[0]
    g, inner, nonempty, e = 0, 0, 0, 0
    for r in range(rows):
        length = row_lengths[r]
        if length == 0:
            continue
        current = np.int64(first[nonempty])
        nonempty += 1
        left = length
        for j in range(groups[r]):
            if j + 1 < groups[r]:
                size = np.int64(sizes[inner]) + 1
                if size >= left:  # the row's last group needs at least one entry
                    return g, 1
            else:
                size = left
            if j > 0:
                current -= np.int64(drops[inner - 1]) + 1
                if current < 0:
                    return g, 2
            if j + 1 < groups[r]:
                inner += 1
            level[g], group_size[g] = current, size
            key = np.int64(codes[e])
            keys[e] = key
            for i in range(e + 1, e + size):
                key += np.int64(codes[i]) + 1
                keys[i] = key
            e += size
            left -= size
            g += 1
    return g, 0


def _level_totals(root, p, out, levels, low_scale, high_scale):
    """quantize.py's `_Entries.levels` and the KL search's two bincounts in one pass: writes
    floor(min(root * low_scale, levels - 1)) into out (N,) int64 and returns (mass (levels,) float64 =
    bincount(out, weights=p), count (levels,) int64 = bincount(out), unsure). The sums run in index order
    as numpy's bincount does, so they are the same bits. unsure > 0 when an entry's level could differ
    from quantize's exact one (the two scales disagree, or the root is not a number >= 0): the caller
    then takes the numpy path, which resolves such entries with the exact exp."""
    n = root.shape[0]
    mass = np.zeros(levels, dtype=np.float64)
    count = np.zeros(levels, dtype=np.int64)
    top = levels - 1
    unsure = 0
    for i in range(n):
        low = root[i] * low_scale
        high = root[i] * high_scale
        if not low >= 0.0:  # NaN, or a negative root: never from exp, but never an index either
            return mass, count, n + 1
        if low > top:
            low = top
        if high > top:
            high = top
        level = np.int64(low)
        if level != np.int64(high):
            unsure += 1
        out[i] = level
        mass[level] += p[i]
        count[level] += 1
    return mass, count, unsure


def _dictionary_count(ids, table, distinct):
    """dictionary.build's first pass, without an array as long as the vocabulary per call: counts every id
    in `table` (> max id,) uint32, which is all zero on entry (a per-thread buffer, scratch.zeroed), and
    lists each id once, in order of first appearance, in `distinct` (> U,) int64; returns U. The caller
    sorts distinct[:U] (numpy's sort: several times faster than a compiled one) for `_dictionary_keys`,
    which leaves the table zeroed again."""
    u = 0
    for i in range(ids.shape[0]):
        v = ids[i]
        seen = table[v]
        table[v] = seen + 1
        distinct[u] = v  # kept only where the id is new (branch-free: ids repeat at random)
        u += seen == 0
    return u


def _dictionary_keys(ids, ordered, table, work, key_to_id, key_class, keys):
    """dictionary.build's keys from `_dictionary_count`'s table and its distinct ids sorted (`ordered`
    (U,) int64): writes key_to_id and key_class (U,) int64 in (class descending, id ascending) order,
    class = floor(log2(count)), and every entry's key into keys (N,) int32; resets the table to zero.
    `work` (>= U,) int64 is scratch (`_dictionary_count`'s `distinct` may be passed again)."""
    u = ordered.shape[0]
    first = np.zeros(NUM_CLASSES, dtype=np.int64)  # first[c]: the number of ids of class c, then its next key
    for j in range(u):
        count = np.int64(table[ordered[j]])
        c = 0  # floor(log2(count)): count >= 1
        while count >> (c + 1):
            c += 1
        work[j] = c
        first[c] += 1
    at = 0
    for c in range(NUM_CLASSES - 1, -1, -1):  # keys: classes descending, ids ascending within a class
        size = first[c]
        first[c] = at
        at += size
    for j in range(u):
        c = work[j]
        key = first[c]
        first[c] = key + 1
        key_to_id[key], key_class[key] = ordered[j], c
        table[ordered[j]] = key
    for i in range(ids.shape[0]):
        keys[i] = table[ids[i]]
    for j in range(u):
        table[ordered[j]] = 0


def _uints(buf, offs, index, count):
    """Integer stream pair `index` (symbols) / `index + 1` (extra bits) of `count` values, from the
    streams' bytes `buf` (stream i = buf[offs[i]:offs[i + 1]]): (values (count,) int64, status, a, b, c)."""
    values = np.empty(count, dtype=np.int64)
    status, a, b, c = _uints_into(buf, offs, index, values)
    return values, status, a, b, c


def _uints_into(buf, offs, index, values):
    """`_uints` into `values` (count,): (status, a, b, c) as `_decode_lossy` returns them."""
    count = values.shape[0]
    s0, s1 = offs[index], offs[index + 1]
    if s1 - s0 != count:
        return 1, index, s1 - s0, count
    total, top = 0, 0
    for i in range(s0, s1):
        symbol = np.int64(buf[i])
        top = max(top, symbol)
        if symbol >= 16:
            total += symbol // 4 - 2
    if top >= 128:
        return 2, top, 0, 0
    e0, e1 = offs[index + 1], offs[index + 2]
    if e1 - e0 != (total + 7) // 8:
        return 1, index + 1, e1 - e0, (total + 7) // 8
    if total % 8 and np.int64(buf[e1 - 1]) & ((1 << (8 - total % 8)) - 1):
        return 3, 0, 0, 0
    _read_fields(buf[s0:s1], buf[e0:e1], values)
    return 0, 0, 0, 0


def _planes(buf, offs, index, out):
    """Float32 byte-plane stream `index` -> `out` (4R,) uint8, the values' little-endian bytes:
    (status, a, b, c) as `_decode_lossy` returns them."""
    rows = out.shape[0] // 4
    s0, s1 = offs[index], offs[index + 1]
    if s1 - s0 != 4 * rows:
        return 1, index, s1 - s0, 4 * rows
    for plane in range(4):
        for r in range(rows):
            out[4 * r + plane] = buf[s0 + plane * rows + r]
    return 0, 0, 0, 0


def _top(values):
    """values.max() of a non-empty array, -1 for an empty one. (Plain loops: numba compiles array methods
    and slice assignments with casts into much more code, seconds of compile time in a big function.)"""
    top = -1
    for i in range(values.shape[0]):
        top = max(top, values[i])
    return top


def _total(values):
    total = 0
    for i in range(values.shape[0]):
        total += values[i]
    return total


def _copy(source, target):
    for i in range(source.shape[0]):
        target[i] = source[i]


def _decode_lossy(buf, offs, levels, with_counts, seq, lengths, key_to_id, ids, counts, token, tail, level, size,
                  work):  # fmt: skip
    """A lossy payload's streams (stream i = buf[offs[i]:offs[i + 1]]) -> the output arrays, which the
    header's counts size: key_to_id (U,) int64 (the dictionary; the caller checks its ids are distinct, a
    sort numba would take seconds to compile); seq (S,), lengths (R,), ids (N,), counts (N,; unused
    without them) int32; token and tail (4R,) uint8, the float32 values' little-endian bytes; level and
    size (N,) int64 of every tie group in entry order (the first G); `work` (>= 2N,) int64 holds the
    per-entry temporaries (a scratch buffer, for the page faults of fresh full-size arrays). Returns
    (status, a, b, c): status 0 and a = G when valid, else DECODE_ERRORS[status] with its numbers a, b, c
    for the first check that failed (codec.decode's checks and messages; where a payload fails several,
    the one named may differ: the tie groups' two checks run group by group here, and the step-by-step
    path runs them per block of rows); the outputs are then undefined."""
    n_seq, n_rows, n, n_dict = seq.shape[0], lengths.shape[0], ids.shape[0], key_to_id.shape[0]
    values, status, a, b, c = _uints(buf, offs, 0, n_seq)
    if status:
        return status, a, b, c
    if _total(values) != n_rows:
        return 4, 0, 0, 0
    _copy(values, seq)
    row_lengths, status, a, b, c = _uints(buf, offs, 2, n_rows)
    if status:
        return status, a, b, c
    if n_rows and _top(row_lengths) > _INT32_MAX:
        return 5, 0, 0, 0
    if _total(row_lengths) != n:
        return 6, 0, 0, 0
    _copy(row_lengths, lengths)
    # the dictionary: ids per count class (31 down to 0), then each class's ids as gaps
    sizes, status, a, b, c = _uints(buf, offs, 4, NUM_CLASSES)
    if status:
        return status, a, b, c
    if _total(sizes) != n_dict:
        return 7, 0, 0, 0
    gaps, status, a, b, c = _uints(buf, offs, 6, n_dict)
    if status:
        return status, a, b, c
    key_class = np.empty(n_dict, dtype=np.int64)
    at = 0
    for j in range(NUM_CLASSES):
        previous = np.int64(-1)
        for _ in range(sizes[j]):
            value = gaps[at] + previous + 1  # a class's first id: previous = -1, so the gap itself
            if value > _INT32_MAX:
                return 8, 0, 0, 0
            key_to_id[at], key_class[at] = value, NUM_CLASSES - 1 - j
            previous = value
            at += 1
    codes, keys = work[:n], work[n : 2 * n]
    status, a, b, c = _uints_into(buf, offs, 8, codes)
    if status:
        return status, a, b, c
    if n and _top(codes) >= n_dict:
        return 9, _top(codes), n_dict, 0
    status, a, b, c = _planes(buf, offs, 10, token)
    if status:
        return status, a, b, c
    status, a, b, c = _planes(buf, offs, 11, tail)
    if status:
        return status, a, b, c
    if with_counts:
        values, status, a, b, c = _uints(buf, offs, 12, n)
        if status:
            return status, a, b, c
        if n and _top(values) > _INT32_MAX:
            return 10, 0, 0, 0
        _copy(values, counts)
    else:
        for index in range(12, 14):
            if offs[index + 1] != offs[index]:
                return 1, index, offs[index + 1] - offs[index], 0
    # the variant's streams: groups per row, first levels, steps (+ overflows), as lossy.py lays them out
    groups, status, a, b, c = _uints(buf, offs, 14, n_rows)
    if status:
        return status, a, b, c
    nonempty, total_groups = 0, 0
    for r in range(n_rows):
        if (groups[r] > 0) != (row_lengths[r] > 0) or groups[r] > row_lengths[r]:
            return 11, 0, 0, 0
        if row_lengths[r] > 0:
            nonempty += 1
        total_groups += groups[r]
    inner = total_groups - nonempty
    first, status, a, b, c = _uints(buf, offs, 16, nonempty)
    if status:
        return status, a, b, c
    s0, s1 = offs[18], offs[19]
    if s1 - s0 != inner:
        return 1, 18, s1 - s0, inner
    top, size_overflows, drop_overflows = 0, 0, 0
    for i in range(s0, s1):
        step = np.int64(buf[i])
        top = max(top, step)
        if step >> 3 == _STEP_CAP:
            size_overflows += 1
        if step & 7 == _STEP_CAP:
            drop_overflows += 1
    if top >= 64:
        return 12, top, 0, 0
    size_extra, status, a, b, c = _uints(buf, offs, 19, size_overflows)
    if status:
        return status, a, b, c
    drop_extra, status, a, b, c = _uints(buf, offs, 21, drop_overflows)
    if status:
        return status, a, b, c
    group_sizes = np.empty(inner, dtype=np.int64)
    level_drops = np.empty(inner, dtype=np.int64)
    x, y = 0, 0
    for g in range(inner):
        step = np.int64(buf[s0 + g])
        group_sizes[g], level_drops[g] = step >> 3, step & 7
        if step >> 3 == _STEP_CAP:
            group_sizes[g] += size_extra[x]
            x += 1
        if step & 7 == _STEP_CAP:
            level_drops[g] += drop_extra[y]
            y += 1
    if n == 0:
        return 0, 0, 0, 0
    if _top(first) >= levels:
        return 13, _top(first), levels, 0
    n_groups, status = _entries(row_lengths, codes, groups, group_sizes, first, level_drops, keys, level, size)
    if status:
        return 13 + status, 0, 0, 0
    uses = np.zeros(n_dict, dtype=np.int64)
    for e in range(n):
        key = keys[e]
        if key >= n_dict:
            return 16, _top(keys), n_dict, 0
        uses[key] += 1
        ids[e] = key_to_id[key]
    for key in range(n_dict):  # each key's count class, floor(log2(uses)), is the one the dictionary sent
        if uses[key] == 0 or uses[key] >> key_class[key] != 1:
            return 17, 0, 0, 0
    return 0, n_groups, 0, 0


def _put(values, out, offs, index):
    """Integer stream pair `index` (symbols, extra bits) into out[offs[index]:], setting offs[index + 1] and
    offs[index + 2]; False when a value is outside [0, 2**32). out must hold 5 bytes per value + 8."""
    at, n = offs[index], values.shape[0]
    extra, done = _encode_into(values, out[at : at + n], out[at + n :])
    offs[index + 1], offs[index + 2] = at + n, at + n + extra
    return done == n


def _put_planes(values, out, offs, index):
    """Float32 values' bytes (4R,) as byte planes (byte 0 of every value, then 1, 2, 3) into stream `index`."""
    rows, at = values.shape[0] // 4, offs[index]
    for plane in range(4):
        for r in range(rows):
            out[at + plane * rows + r] = values[4 * r + plane]
    offs[index + 1] = at + 4 * rows


def _encode_lossy(seq_rows, row_lengths, rank, keys, order, levels, key_to_id, key_class, token, tail, counts, out,
                  offs, work):  # fmt: skip
    """codec.encode's lossy streams in one pass, the same bytes: rows (R,) of entries (N,) already in the
    sent order (ragged.sort_within_rows: rank = M - 1 - level ascending, then key), with `order` (N,) the
    entries' positions before that sort (read only with counts); the dictionary (key_to_id, key_class
    (U,)); M = levels; token and tail (4R,) uint8, the float32 values' bytes; counts (N,) in the original
    order, or empty (no counts). Stream i is written to out[offs[i]:offs[i + 1]] (offs (24,), out large
    enough: codec.py sizes it); `work` (>= 6N + 2R + U,) int64 holds the temporaries (a scratch buffer:
    fresh full-size arrays would cost a page fault per 4 KiB on every call). Returns 0, or 1 if a row
    holds one key twice at one level, 2 if a value does not fit the integer code (then the caller takes
    the step-by-step path, which raises its error)."""
    n, rows, n_dict = keys.shape[0], row_lengths.shape[0], key_to_id.shape[0]
    codes, sizes, drops = work[:n], work[n : 2 * n], work[2 * n : 3 * n]
    size_overflow, drop_overflow, sent_counts = work[3 * n : 4 * n], work[4 * n : 5 * n], work[5 * n : 6 * n]
    groups, first = work[6 * n : 6 * n + rows], work[6 * n + rows : 6 * n + 2 * rows]
    gaps = work[6 * n + 2 * rows : 6 * n + 2 * rows + n_dict]
    inner, nonempty, ok = _groups_into(row_lengths, rank, keys, codes, groups, sizes, drops, first)
    if not ok:
        return 1
    # the dictionary: ids per count class (31 down to 0), then each class's ids as gaps
    class_sizes = np.zeros(32, dtype=np.int64)
    for u in range(n_dict):
        class_sizes[31 - key_class[u]] += 1
        starts = u == 0 or key_class[u] != key_class[u - 1]
        gaps[u] = key_to_id[u] if starts else key_to_id[u] - key_to_id[u - 1] - 1
    offs[0] = 0
    fits = _put(seq_rows, out, offs, 0) and _put(row_lengths, out, offs, 2) and _put(class_sizes, out, offs, 4)
    fits = fits and _put(gaps, out, offs, 6) and _put(codes, out, offs, 8)
    _put_planes(token, out, offs, 10)
    _put_planes(tail, out, offs, 11)
    if counts.shape[0]:
        for e in range(n):
            sent_counts[e] = counts[order[e]]
        fits = fits and _put(sent_counts, out, offs, 12)
    else:
        offs[13] = offs[14] = offs[12]
    fits = fits and _put(groups, out, offs, 14)
    for r in range(nonempty):  # first levels from first ranks
        first[r] = levels - 1 - first[r]
    fits = fits and _put(first[:nonempty], out, offs, 16)
    at = offs[18]
    x, y = 0, 0
    for g in range(inner):  # lossy.split_steps: 8 * min(size - 1, 7) + min(drop - 1, 7), the rest overflows
        a, b = sizes[g], drops[g]
        out[at + g] = (min(a, _STEP_CAP) << 3) | min(b, _STEP_CAP)
        if a >= _STEP_CAP:
            size_overflow[x] = a - _STEP_CAP
            x += 1
        if b >= _STEP_CAP:
            drop_overflow[y] = b - _STEP_CAP
            y += 1
    offs[19] = at + inner
    fits = fits and _put(size_overflow[:x], out, offs, 19) and _put(drop_overflow[:y], out, offs, 21)
    return 0 if fits else 2


_LOOPS = ("_encode", "_encode_into", "_put", "_put_planes", "_encode_lossy", "_decode", "_read_fields", "_groups", "_groups_into", "_entries", "_level_totals", "_uints", "_uints_into", "_planes", "_top", "_total", "_copy", "_decode_lossy", "_dictionary_count", "_dictionary_keys")
encode_fields = _Lazy("_encode")
decode_fields = _Lazy("_decode")
tie_groups = _Lazy("_groups")
level_totals = _Lazy("_level_totals")
decode_lossy = _Lazy("_decode_lossy")
dictionary_count = _Lazy("_dictionary_count")
dictionary_keys = _Lazy("_dictionary_keys")
encode_lossy = _Lazy("_encode_lossy")


def warm_up() -> float:
    """Compile (or load from numba's cache) every loop for the argument types the codec passes, so no
    request pays for it; seconds taken (0 when the kernels are off)."""
    if not enabled():
        return 0.0
    import time

    begin = time.perf_counter()
    symbols, extra, _ = encode_fields(np.array([3, 300], dtype=np.int64))
    # as the decoder passes them: read-only views of the payload's bytes (a type of their own to numba)
    decode_fields(np.frombuffer(symbols.tobytes(), dtype=np.uint8), np.frombuffer(extra.tobytes(), dtype=np.uint8))
    lengths = np.array([2], dtype=np.int64)
    for dtype in (np.uint32, np.uint64):  # sort_within_rows packs into either
        tie_groups(lengths, np.array([0, 1], dtype=dtype), np.array([0, 1], dtype=dtype))
    # the whole-payload encoder and decoder, as codec.py passes their arguments
    one, two = np.array([1], dtype=np.int64), np.array([2], dtype=np.int64)
    for dtype in (np.uint32, np.uint64):  # the sorted ranks and keys, as sort_within_rows packs them
        encode_lossy(one, two, np.array([0, 1], dtype=dtype), np.array([0, 1], dtype=dtype), np.zeros(0, np.int64),
                     2, np.array([5, 9], dtype=np.int64), np.zeros(2, np.int64), np.zeros(8, np.uint8),
                     np.zeros(8, np.uint8), np.zeros(0, np.int64), np.empty(256, np.uint8), np.zeros(24, np.int64),
                     np.empty(16, np.int64))  # fmt: skip
    i32, u8, i64 = np.empty(0, np.int32), np.empty(0, np.uint8), np.empty(0, np.int64)
    decode_lossy(np.zeros(1, dtype=np.uint8), np.zeros(24, dtype=np.int64), 1, False, i32, i32, i64, i32, i32, u8,
                 u8, i64, i64, i64)  # fmt: skip
    root = np.array([0.5, 0.25])
    level_totals(root, root * root, np.empty(2, dtype=np.int64), 8, 8.0, 8.0)
    ids, table, distinct = np.array([3, 1, 3], dtype=np.int64), np.zeros(4, dtype=np.uint32), np.empty(3, np.int64)
    ordered = np.sort(distinct[: dictionary_count(ids, table, distinct)])
    dictionary_keys(ids, ordered, table, distinct, np.empty(2, np.int64), np.empty(2, np.int64), np.empty(3, np.int32))
    return time.perf_counter() - begin
