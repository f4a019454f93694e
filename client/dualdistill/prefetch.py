"""`Prefetcher`: fetch the teacher's logits for the next batches while the student trains on this one.

    for batch, teacher in Prefetcher(fetch_fn, batches, depth=2):   # in order, like `zip(batches, map(...))`
        ...train on (batch, teacher)...

At most `depth` fetches are outstanding (running, or finished but not yet consumed), so memory holds at
most `depth` teacher results besides the one the consumer is using; after the consumer takes batch i,
the fetches of batches i+1 .. i+depth run while it trains. A fetch that raised re-raises its exception from the
iteration step of *its* batch, in the consuming thread; the earlier batches are still delivered first and
iteration may continue past it. An exception from `batches` itself surfaces the same way, at its position.
`stats.wait_seconds` is the time the consumer blocked waiting for the teacher (the stall a trainer
reports); `stats.fetch_seconds` the summed duration of the fetches themselves (they overlap).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

B = TypeVar("B")
R = TypeVar("R")


@dataclass
class PrefetchStats:
    batches: int = 0  # (batch, result) pairs delivered, failed fetches included
    wait_seconds: float = 0.0  # consumer time blocked in `next()` on an unfinished fetch
    fetch_seconds: float = 0.0  # summed wall time of the fetch calls (in the worker threads)
    max_outstanding: int = 0  # most fetches outstanding at once (<= depth)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def stall_share(self, total_seconds: float) -> float:
        """Fraction of `total_seconds` (e.g. the epoch's wall time) spent waiting for the teacher."""
        return self.wait_seconds / total_seconds if total_seconds > 0 else 0.0


class Prefetcher(Generic[B, R]):
    """Iterate (batch, fetch_fn(batch)) over `batches`, computing fetch_fn up to `depth` batches ahead.

    fetch_fn: called in worker threads, so it must be thread-safe (TeacherClient is).
    batches: any iterable; it is advanced in the consuming thread, never concurrently.
    depth: fetches kept outstanding ahead of the consumer (>= 1).
    workers: threads running fetches concurrently (default: depth, i.e. every outstanding fetch may be
        in flight; the teacher batches concurrent requests together). 1 serializes the fetches.
    Fetching starts at construction. `close()` (or leaving the `with` block, or reaching the end) cancels
    fetches not yet started, waits for running ones, and joins every thread.
    """

    def __init__(
        self, fetch_fn: Callable[[B], R], batches: Iterable[B], depth: int = 2, workers: int | None = None
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        workers = depth if workers is None else workers
        if not 1 <= workers <= depth:
            raise ValueError(f"workers must be in [1, depth={depth}], got {workers}")
        self.depth = depth
        self.stats = PrefetchStats()
        self._fetch_fn = fetch_fn
        self._batches: Iterator[B] | None = iter(batches)
        self._pending: deque[tuple[B | None, Future[R]]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dualdistill-prefetch")
        self._closed = False
        self._fill()

    def _timed_fetch(self, batch: B) -> R:
        began = time.perf_counter()
        try:
            return self._fetch_fn(batch)
        finally:
            elapsed = time.perf_counter() - began
            with self.stats._lock:
                self.stats.fetch_seconds += elapsed

    def _fill(self) -> None:
        """Submit fetches until `depth` are outstanding or `batches` is exhausted."""
        while self._batches is not None and len(self._pending) < self.depth:
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                break
            except Exception as exc:  # noqa: BLE001 - delivered at its position, see module docstring
                self._batches = None  # an iterator that raised is finished
                failed: Future[R] = Future()
                failed.set_exception(exc)
                self._pending.append((None, failed))
                break
            self._pending.append((batch, self._pool.submit(self._timed_fetch, batch)))
        self.stats.max_outstanding = max(self.stats.max_outstanding, len(self._pending))

    def __iter__(self) -> Prefetcher[B, R]:
        return self

    def __next__(self) -> tuple[B, R]:
        if self._closed or not self._pending:
            self.close()
            raise StopIteration
        batch, future = self._pending.popleft()
        began = time.perf_counter()
        try:
            result = future.result()
        finally:
            self.stats.wait_seconds += time.perf_counter() - began
            self.stats.batches += 1
            # Refill only now: the consumer's batch plus `depth` outstanding fetches is the memory bound.
            self._fill()
        return batch, result  # type: ignore[return-value]  # batch is None only for a failed future

    def close(self) -> None:
        """Stop: cancel fetches not started, wait for running ones, join the worker threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._batches = None
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        # Abandoned without close(): do not block the garbage collector, but let idle threads exit.
        if not getattr(self, "_closed", True):
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Prefetcher[B, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
