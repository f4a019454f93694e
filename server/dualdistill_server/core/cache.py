"""The result-cache seam: per-sequence keys and the interface a cache backend implements.

A result depends only on (model fingerprint, token ids, start, top_k, temperature, mode, samples, seed)
(docs/api.md: the sample stream is a function of seed, token ids and start alone, never of the batch),
so each sequence of a request is looked up and stored on its own. The same key deduplicates identical
sequences in flight (batcher.py).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Protocol

import numpy as np
from dualdistill.results import SequenceLogits

KEY_VERSION = b"dualdistill-seq-v1"


def sequence_key(fingerprint: str, task) -> bytes:
    """32-byte SHA-256 of everything the result depends on; `task` is a models.LogitsTask.

    Temperature enters as its float32 bits (the wire type), token ids as little-endian int64. Parameters
    the mode does not use are zeroed (top_k in "sample" mode; samples and seed in "topk" mode), so
    requests that differ only there share results.
    """
    sample = task.mode == "sample"
    top_k = 0 if sample else task.top_k
    samples, seed = (task.samples, task.seed) if sample else (0, 0)
    digest = hashlib.sha256(KEY_VERSION)
    digest.update(fingerprint.encode("utf-8") + b"\0" + task.mode.encode("ascii") + b"\0")
    digest.update(struct.pack("<qqfqQ", task.start, top_k, task.temperature, samples, seed))
    digest.update(np.ascontiguousarray(task.token_ids, dtype="<i8").tobytes())
    return digest.digest()


class ResultCache(Protocol):
    """What the service needs from a cache backend (memory, disk, redis...). Must be cheap and non-blocking
    enough to call on the event loop; a backend that does I/O should keep it off the loop itself."""

    def get(self, key: bytes) -> SequenceLogits | None: ...

    def put(self, key: bytes, value: SequenceLogits) -> None: ...


class NoCache:
    """Caches nothing (`--cache none`)."""

    def get(self, key: bytes) -> SequenceLogits | None:
        return None

    def put(self, key: bytes, value: SequenceLogits) -> None:
        return None
