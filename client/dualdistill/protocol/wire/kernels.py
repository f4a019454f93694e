"""Compiled loops (numba) for the codec's per-field work, where numba is installed.

    encode_fields / decode_fields   intcode.py's bucket code: symbols + bit fields of varying width
    tie_groups / group_entries      lossy.py's tie groups of sorted rows, and their inverse
    level_totals                    quantize.py's levels at one M with their per-level mass and count

numpy does this work in a fixed series of whole-array steps (offsets, words, shifts, masks, cumulative
sums: ~40 calls per integer stream), which on a small payload cost more than the data and on a large one
make ~20 passes over it; a compiled loop reads or writes each field once. The loops produce the same
values and bytes as the numpy code (every codec test runs on both paths: tests/fixtures/codec_paths.py),
so a payload does not depend on which one made or read it.

    DUALDISTILL_WIRE_KERNELS=numpy    never use them
    DUALDISTILL_WIRE_KERNELS=numba    require them (an ImportError at the first call without numba)
    unset / auto                      use them when numba is installed (the server extra installs it)

numba is imported and each loop compiled on its first call (about a second; the machine code is cached
on disk by numba, next to this module or in NUMBA_CACHE_DIR, so later processes load it in a few ms).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable

import numpy as np

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
    """`fn` compiled by numba on its first call, its machine code cached on disk where numba can write
    (else compiled in memory each process)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.compiled = fn, None

    def __call__(self, *args):
        if self.compiled is None:
            import numba

            try:
                self.compiled = numba.njit(cache=True, nogil=True)(self.fn)
            except RuntimeError as exc:  # "cannot cache function ...: no locator available" (read-only)
                log.warning("numba cannot cache %s here (%s); compiling it in memory", self.fn.__name__, exc)
                self.compiled = numba.njit(nogil=True)(self.fn)
        return self.compiled(*args)


# ---- the loops (plain Python as written; numba compiles them) ---------------------------------------


def _encode(values):
    """(V,) int64 -> (symbols (V,) uint8, extra bits packed MSB first and zero-padded (uint8), V); when a
    value is outside [0, 2**32): (empty, empty, -(i + 1)) for the first such value i."""
    n = values.shape[0]
    symbols = np.empty(n, dtype=np.uint8)
    out = np.empty(4 * n + 8, dtype=np.uint8)  # at most 29 extra bits per value
    acc = np.uint64(0)
    held = 0  # bits of acc not written yet (< 8 between values)
    at = 0
    for i in range(n):
        v = values[i]
        if v < 16:
            if v < 0:
                return symbols[:0], out[:0], -(i + 1)
            symbols[i] = v
            continue
        if v >= 4294967296:
            return symbols[:0], out[:0], -(i + 1)
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
    return symbols, out[:at], n


def _decode(symbols, nbits, extra):
    """Inverse of `_encode` given nbits (V,) (the extra bits of each symbol) and the validated extra-bit
    bytes (uint8): (V,) uint64."""
    n = symbols.shape[0]
    out = np.empty(n, dtype=np.uint64)
    acc = np.uint64(0)
    held = 0
    at = 0
    for i in range(n):
        width = nbits[i]
        if width == 0:
            out[i] = symbols[i]
            continue
        while held < width:
            acc = (acc << np.uint64(8)) | np.uint64(extra[at])
            at += 1
            held += 8
        held -= width
        field = (acc >> np.uint64(held)) & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))
        out[i] = (np.uint64(4 + (symbols[i] & 3)) << np.uint64(width)) | field
    return out


def _groups(row_lengths, rank, keys):
    """Rows sorted by (rank, key) -> (codes (N,), groups per row (R,), size - 1 and rank step - 1 of every
    group after a row's first (G - R',), first rank of every non-empty row (R',), ok): lossy.py's tie
    groups. ok is False if a row holds one key twice at one rank (then the rest is undefined)."""
    n, rows = keys.shape[0], row_lengths.shape[0]
    codes = np.empty(n, dtype=np.int64)
    groups = np.zeros(rows, dtype=np.int64)
    sizes = np.empty(n, dtype=np.int64)
    drops = np.empty(n, dtype=np.int64)
    first = np.empty(rows, dtype=np.int64)
    inner, nonempty, e0 = 0, 0, 0
    for r in range(rows):
        e1 = e0 + row_lengths[r]
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
                return codes, groups, sizes[:0], first[:0], drops[:0], False
            else:
                codes[i] = key - previous_key - 1
            previous_rank, previous_key = this_rank, key
        groups[r] = count
        e0 = e1
    return codes, groups, sizes[:inner], first[:nonempty], drops[:inner], True


def _entries(row_lengths, codes, groups, sizes, first, drops):
    """Inverse of `_groups` (in the sent order): (keys (N,), level (G,) and size (G,) of every group,
    status) with first = the rows' first levels and drops = level drops - 1. status: 0, or 1 if the
    groups overrun a row, 2 if a level drops below 0. Inputs validated as lossy.decode_entries needs them
    (groups per row checked, array lengths consistent)."""
    n, rows = codes.shape[0], row_lengths.shape[0]
    keys = np.empty(n, dtype=np.int64)
    level = np.empty(sizes.shape[0] + first.shape[0], dtype=np.int64)
    group_size = np.empty(level.shape[0], dtype=np.int64)
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
                    return keys, level, group_size, 1
            else:
                size = left
            if j > 0:
                current -= np.int64(drops[inner - 1]) + 1
                if current < 0:
                    return keys, level, group_size, 2
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
    return keys, level[:g], group_size[:g], 0


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


encode_fields = _Lazy(_encode)
decode_fields = _Lazy(_decode)
tie_groups = _Lazy(_groups)
group_entries = _Lazy(_entries)
level_totals = _Lazy(_level_totals)


def warm_up() -> float:
    """Compile (or load from numba's cache) every loop for the argument types the codec passes, so no
    request pays for it; seconds taken (0 when the kernels are off)."""
    if not enabled():
        return 0.0
    import time

    begin = time.perf_counter()
    symbols, extra, _ = encode_fields(np.array([3, 300], dtype=np.int64))
    # as the decoder passes them: read-only views of the payload's bytes (a type of their own to numba)
    decode_fields(np.frombuffer(symbols.tobytes(), dtype=np.uint8), np.array([0, 4], dtype=np.int8),
                  np.frombuffer(extra.tobytes(), dtype=np.uint8))  # fmt: skip
    lengths = np.array([2], dtype=np.int64)
    for dtype in (np.uint32, np.uint64):  # sort_within_rows packs into either
        tie_groups(lengths, np.array([0, 1], dtype=dtype), np.array([0, 1], dtype=dtype))
    empty = np.zeros(0, dtype=np.int64)
    group_entries(lengths, np.zeros(2, dtype=np.uint64), np.array([1], dtype=np.int64), empty,
                  np.array([0], dtype=np.int64), empty)  # fmt: skip
    root = np.array([0.5, 0.25])
    level_totals(root, root * root, np.empty(2, dtype=np.int64), 8, 8.0, 8.0)
    return time.perf_counter() - begin
