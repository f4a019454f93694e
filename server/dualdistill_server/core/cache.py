"""The result cache as the core sees it: per-sequence keys, and `ResultCache` over a byte backend.

A result depends only on (model fingerprint, token ids, start, top_k, temperature, mode, samples, seed)
(docs/api.md: the sample stream is a function of seed, token ids and start alone, never of the batch),
so each sequence of a request is looked up and stored on its own. The same key deduplicates identical
sequences in flight (batcher.py), whichever client or tenant sent them.

    lookup(keys) ─> results waiting to be written (in process) ─> backend.get_many (one round trip)
                 ─> the waiting results again (some may have finished while the backend answered)
    store(key, result)   (called by the batcher on the event loop as each result is computed)
                 ─> waiting results ─> writer task: lossless wire encoding (a thread) ─> backend.put_many

Values are `dualdistill.protocol.wire.encode([result], lossless=True)`: bit-exact, so a cached result serves every
response format (JSON, binary, binary-lossless, protobuf), and compressed (docs/wire-format.md). Encoding
and decoding run on threads, off the event loop. A backend failure (Redis down, disk full) is
logged, counted in `dualdistill_cache_errors_total` and answered as a miss: requests are computed, never
failed. After a failure the backend is left alone for a while (1 s, doubling to 30 s while it keeps
failing), so a dead Redis costs one timeout per back-off period instead of one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections import deque

import numpy as np

from dualdistill.protocol.results import SequenceLogits

from ..cache import CacheBackend
from ..metrics import Metrics

log = logging.getLogger(__name__)
KEY_VERSION = b"dualdistill-seq-v1"
WRITE_BATCH = 64  # results encoded and written per backend call
BACKOFF_S = (1.0, 30.0)  # first and longest pause after a backend failure


def sequence_key(fingerprint: str, task) -> bytes:
    """32-byte SHA-256 of everything the result depends on; `task` is a models.LogitsTask.

    Temperature enters as its float32 bits (the wire type), token ids as little-endian int64. Parameters
    the mode does not use are zeroed (top_k in "sample" mode; samples and seed in "topk" mode), so
    requests that differ only there share results.
    """
    params = task.params
    sample = params.mode == "sample"
    top_k = 0 if sample else params.top_k
    samples, seed = (params.samples, params.seed) if sample else (0, 0)
    digest = hashlib.sha256(KEY_VERSION)
    digest.update(fingerprint.encode("utf-8") + b"\0" + params.mode.encode("ascii") + b"\0")
    digest.update(struct.pack("<qqfqQ", task.start, top_k, params.temperature, samples, seed))
    digest.update(np.ascontiguousarray(task.token_ids, dtype="<i8").tobytes())
    if getattr(task, "token_ranks", False):  # ranked results are their own entries (keys of others unchanged)
        digest.update(b"\0token_ranks")
    return digest.digest()


# A cached result that carries token ranks: RANKS_MAGIC, u32 row count, int32 ranks, then the wire payload
# (the wire format has no ranks: they serve the OpenAI dialect only).
RANKS_MAGIC = b"DDRK"


def encode_result(result: SequenceLogits) -> bytes:
    from dualdistill.protocol import wire

    payload = wire.encode([result], lossless=True)
    if result.token_ranks is None:
        return payload
    ranks = np.ascontiguousarray(result.token_ranks, dtype="<i4")
    return RANKS_MAGIC + struct.pack("<I", len(ranks)) + ranks.tobytes() + payload


def decode_result(payload: bytes) -> SequenceLogits:
    from dualdistill.protocol import wire

    ranks = None
    if payload[:4] == RANKS_MAGIC:
        (rows,) = struct.unpack_from("<I", payload, 4)
        ranks = np.frombuffer(payload, dtype="<i4", count=rows, offset=8).astype(np.int32)
        payload = payload[8 + 4 * rows :]
    (result,) = wire.decode(payload)
    if ranks is not None:
        result.token_ranks = ranks
        result.__post_init__()  # checks the row count
    return result


def result_nbytes(result: SequenceLogits) -> int:
    arrays = (result.row_lengths, result.top_ids, result.top_logprobs, result.token_logprobs, result.tail_logprobs)
    return sum(a.nbytes for a in arrays) + (result.counts.nbytes if result.counts is not None else 0)


class ResultCache:
    """Looks up and stores per-sequence results in `backend` (None: `--cache none`, every lookup misses
    and nothing is counted). Lives on one event loop; `lookup` and `store` never block it."""

    def __init__(self, backend: CacheBackend | None, metrics: Metrics, *, max_waiting_bytes: int = 256 << 20) -> None:
        self.backend = backend
        self.kind = backend.kind if backend is not None else "none"
        self._metrics = metrics
        self._max_waiting_bytes = max_waiting_bytes
        self._waiting: dict[bytes, SequenceLogits] = {}  # computed, not yet written: served to lookups
        self._waiting_bytes = 0
        self._queue: deque[bytes] = deque()  # keys of `_waiting` the writer has not taken yet
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._closing = False
        self._down_until = 0.0
        self._backoff = BACKOFF_S[0]

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    # ---- reads -------------------------------------------------------------------------------------------

    async def lookup(self, model: str, keys: list[bytes]) -> list[SequenceLogits | None]:
        """Cached results (None where missing), in order; counts hits and misses for `model`."""
        if self.backend is None:
            return [None] * len(keys)
        results = [self._waiting.get(key) for key in keys]
        ask = [i for i, result in enumerate(results) if result is None]
        if ask and self._available():
            try:
                payloads = await self.backend.get_many([keys[i] for i in ask])
            except Exception as exc:  # noqa: BLE001 - any backend failure is a miss
                self._failed("get", exc)
            else:
                self._recovered()
                found = [(i, p) for i, p in zip(ask, payloads, strict=True) if p is not None]
                if found:
                    decoded = await asyncio.to_thread(_decode_all, [p for _, p in found])
                    for (i, _), result in zip(found, decoded, strict=True):
                        if result is None:
                            self._count_error("decode")
                        results[i] = result
        # Results that finished while the backend answered: no await from here to the batcher's admission.
        for i in ask:
            if results[i] is None:
                results[i] = self._waiting.get(keys[i])
        hits = sum(result is not None for result in results)
        if hits:
            self._metrics.cache_hits.labels(model=model).inc(hits)
        if hits < len(keys):
            self._metrics.cache_misses.labels(model=model).inc(len(keys) - hits)
        return results

    # ---- writes ------------------------------------------------------------------------------------------

    def store(self, key: bytes, result: SequenceLogits) -> None:
        """Keep `result` for lookups now and write it to the backend in the background."""
        if self.backend is None or self._closing or key in self._waiting:
            return
        size = result_nbytes(result)
        if self._waiting_bytes + size > self._max_waiting_bytes:
            self._count_error("overflow")  # the writer is behind: skip rather than grow without bound
            return
        self._waiting[key] = result
        self._waiting_bytes += size
        self._queue.append(key)
        if self._writer is None:
            self._wakeup = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="cache-writer")
        assert self._wakeup is not None
        self._wakeup.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until every stored result was written (or dropped); False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._waiting:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Finish the writes still waiting (at most `timeout` seconds), then close the backend."""
        if self.backend is None:
            return
        if not await self.flush(timeout):
            log.warning("closing the cache with %d result(s) not written", len(self._waiting))
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        try:
            await self.backend.close()
        except Exception as exc:  # noqa: BLE001 - nothing left to protect
            log.warning("closing the %s cache failed: %r", self.kind, exc)

    async def _write_loop(self) -> None:
        assert self._wakeup is not None and self.backend is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                keys = [self._queue.popleft() for _ in range(min(WRITE_BATCH, len(self._queue)))]
                try:
                    if self._available():
                        results = [self._waiting[key] for key in keys]
                        payloads = await asyncio.to_thread(_encode_all, results)
                        await self.backend.put_many(list(zip(keys, payloads, strict=True)))
                        self._recovered()
                except Exception as exc:  # noqa: BLE001 - a failed write only loses cache entries
                    self._failed("put", exc)
                finally:
                    for key in keys:
                        result = self._waiting.pop(key, None)
                        if result is not None:
                            self._waiting_bytes -= result_nbytes(result)

    # ---- failures ----------------------------------------------------------------------------------------

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, op: str, exc: BaseException) -> None:
        self._count_error(op)
        first = self._down_until == 0.0
        if not first:
            self._backoff = min(self._backoff * 2, BACKOFF_S[1])
        self._down_until = time.monotonic() + self._backoff
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "%s cache %s failed (%s: %s); computing without it for %.0f s",
                self.kind, op, type(exc).__name__, exc, self._backoff)

    def _recovered(self) -> None:
        if self._down_until != 0.0:
            log.warning("%s cache is answering again", self.kind)
            self._down_until = 0.0
            self._backoff = BACKOFF_S[0]

    def _count_error(self, op: str) -> None:
        self._metrics.cache_errors.labels(backend=self.kind, op=op).inc()


def _encode_all(results: list[SequenceLogits]) -> list[bytes]:
    return [encode_result(result) for result in results]


def _decode_all(payloads: list[bytes]) -> list[SequenceLogits | None]:
    out: list[SequenceLogits | None] = []
    for payload in payloads:
        try:
            out.append(decode_result(payload))
        except Exception:  # noqa: BLE001 - a corrupt entry is a miss (counted by the caller)
            out.append(None)
    return out
