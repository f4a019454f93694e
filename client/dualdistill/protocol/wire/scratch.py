"""Per-thread scratch arrays for the encoder's full-size temporaries, kept between calls.

A fresh multi-megabyte numpy array may be mapped and zero-filled by the kernel page by page when it is
first written (glibc hands large freed blocks back to the kernel), so depending on the allocator's state
the quantizer's few full-size arrays (one float64 per entry each) can cost a page fault per 4 KiB on
every payload. The encoder writes them into these buffers instead; per-entry work that needs no
full-size array runs in blocks (BLOCK).

`array(name, n, dtype)` returns a view that stays valid until the next request for the same name on
the same thread; nothing an encoder returns to its caller may alias one.
"""

from __future__ import annotations

import threading

import numpy as np

BLOCK = 1 << 16  # entries per block of block-wise work (float64 temporaries of 512 KiB)
_KEEP_BYTES = 16 << 20  # larger buffers are handed out once, not kept: a thread holds <= ~5 of this size
_local = threading.local()


def array(name: str, n: int, dtype) -> np.ndarray:
    """(n,) array of `dtype`, contents undefined, reused for `name` by later calls on this thread."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    pool = _local.__dict__.setdefault("pool", {})
    buffer = pool.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = np.empty(max(nbytes, 1), dtype=np.uint8)
        if nbytes <= _KEEP_BYTES:
            pool[name] = buffer
    return buffer[:nbytes].view(dtype)


def zeroed(name: str, n: int, dtype) -> np.ndarray:
    """(>= n,) array of `dtype`, all zero, reused for `name` by later calls on this thread: the caller
    must leave it all zero again (so a call pays for the entries it touched, not for n)."""
    dtype = np.dtype(dtype)
    pool = _local.__dict__.setdefault("zeroed", {})
    buffer = pool.get(name)
    if buffer is None or buffer.dtype != dtype or len(buffer) < n:
        buffer = np.zeros(max(n, 1), dtype=dtype)
        if buffer.nbytes <= _KEEP_BYTES:
            pool[name] = buffer
    return buffer


def blocks(n: int) -> list[slice]:
    """[0, n) cut into slices of BLOCK entries."""
    return [slice(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK)]
