"""Dynamic batcher: one per model, coalescing concurrent requests' sequences into padded forwards.

    request A ─┐  (key, LogitsTask) per sequence            ┌─ forward 1: [a0, a1, b0]  (whole requests,
    request B ─┼─> pending (token-bounded) ─> fair order ────┤                            fair order)
    request C ─┘       │ identical key in flight?            └─ forward 2: [c0, c1]
                       └─> join it (dedupe)                     all on the model's single worker thread

Policy, and why (learned from TRL's `_logprob_batcher`, whose queue was unbounded, whose batches split
by request parameters, whose cancelled requests still ran, and whose one bad request failed its batch):
- The unit is a sequence, not a request: a big request spreads over several forwards and a small one
  rides along with others. `ServedModel.compute_logits` accepts tasks with different top_k /
  temperature / mode in one forward, so parameters never split a batch.
- A batch is dispatched when the oldest pending sequence has waited `max_wait_s`, or when the pending
  tokens already fill `max_batch_tokens`. The server's default wait is 0: a request that finds the model
  idle starts at once (a fill window would add its length to every call of an idle server), and the
  sequences that arrive while a forward runs form the next batch, so batches still grow with the load.
- Which sequences a batch takes is fair between tenants and between requests (`_fair_order`): requests
  are served in arrival order within a tenant, and tenants take turns by the tokens they were served
  (the least-served tenant with something pending goes next; one that had nothing pending starts level
  with the others, with neither credit nor debt). The batch takes requests in that order while
  `batch size x longest <= max_batch_tokens`: the first request always (split over forwards if it is
  larger than the budget), every later one only whole (a request does not wait one extra forward for
  its last sequences) and only if it keeps the batch's longest sequence within MAX_LONGEST_GROWTH x
  (padding). A request passed over is ahead of its tenant's later ones next time, so it waits at most
  one forward per older request of its tenant (and per turn of the other tenants). The former policy
  (the oldest sequence plus its neighbours in length) packed tighter, but let young sequences of a
  popular length overtake old ones again and again, which under load spread the latencies. The batch
  then runs in a canonical order.
- The queue is bounded by tokens: a request that would overflow it fails as a whole with
  ResourceExhausted (429) before anything is queued.
- A sequence whose every waiter was cancelled (client gone, deadline passed) is dropped if its forward
  has not started. Identical sequences (same key) in flight are computed once.
- If a batched forward raises, each of its sequences is retried alone, so the exception reaches only
  the requests whose sequence fails by itself.
- The model runs on ONE worker thread per model; `run_on_worker` (generation) uses the same thread, so
  generation and forwards never race on the model, and the event loop does not block on torch while
  anything else needs it.
- Except when nothing else does: a forward runs on the event loop's own thread when the server has no
  other request in flight, nothing else is pending, the worker thread is idle, and forwards of at least
  as many padded tokens and returned rows finished within `inline_forward_s` (learned from the forwards
  so far: none before the first has run on the worker). The hand-off to the worker and back wakes two
  idle threads; on 2 CPU cores that was 0.3-0.7 ms of a one-sequence call (bench/service_ab.py). The
  loop does nothing else during such a forward, so a request arriving then waits up to
  `inline_forward_s` to be read, about as long as it would wait for the model anyway. A one-sequence
  request that finds nothing else pending runs that forward in its own task (`_forward_now`), not a turn
  of the loop later in the scheduler's.
- An engine that computes on threads of its own (vLLM's step thread; engines/base.py `logits_starter`)
  never blocks a thread of ours on its forward: the loop submits the batch and awaits its futures, so a
  forward costs the hand-off to the engine's thread and back, not also the loop's to the worker and back
  (service.py passes no `inline_forward_s` for it). Its results are converted on the loop when the server
  is quiet and they hold at most payload.INLINE_ENTRIES top-k entries (the encoder's rule), else on the
  worker thread (a loop busy converting admits no new request).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from dualdistill.protocol.results import SequenceLogits

from .. import context, engines
from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..metrics import Metrics
from ..os_threads import name_os_thread
from .payload import INLINE_ENTRIES

log = logging.getLogger(__name__)
T = TypeVar("T")
# A request joins a batch only if its longest sequence is at most this many times the batch's longest so
# far: every sequence of a forward is padded to its longest, so one much longer request would make the
# others pay its length. (Short requests joining a long batch pay only their own padding, which the token
# budget bounds.) Loose on purpose: a bound of 2 would split the loadgen's mix of 16-96 tokens into more,
# smaller forwards.
MAX_LONGEST_GROWTH = 8


@dataclass(eq=False)
class _Entry:
    """One distinct sequence in flight and everyone waiting for it."""

    key: bytes
    task: Any  # models.LogitsTask
    tokens: int
    future: asyncio.Future
    enqueued_at: float
    tenant: str = ""  # of the request that queued it (a request joining it later rides along)
    ticket: int = 0  # that request's arrival number in this batcher
    waiters: int = 1
    started: bool = False
    forward_began: float = 0.0  # perf_counter of its forward's start and end (set when it resolves)
    forward_ended: float = 0.0


def _consume_exception(future: asyncio.Future) -> None:
    # An entry may fail after all its waiters left; reading the exception keeps asyncio from warning.
    if not future.cancelled():
        future.exception()


class Batcher:
    """Queues LogitsTasks of one model and runs them in padded batches on the model's worker thread."""

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_tokens: int,
        metrics: Metrics,
        on_result: Callable[[bytes, SequenceLogits], None] | None = None,
        inline_forward_s: float = 0.0,
        quiet: Callable[[], bool] | None = None,
    ) -> None:
        """`inline_forward_s`: the longest forward that may run on the event loop's thread (0: none, see the
        module docstring); `quiet()`: whether the server has no request in flight besides the caller's."""
        self.name = name
        self._model = model
        self._max_batch_tokens = max_batch_tokens
        self._max_wait_s = max_wait_s
        self._max_queue_tokens = max_queue_tokens
        self._metrics = metrics
        self._on_result = on_result
        self._inline_forward_s = inline_forward_s
        self._quiet = quiet
        self._start_logits = engines.logits_starter(model)
        # (padded tokens, returned rows) up to which a forward is expected within inline_forward_s: the
        # forward's cost grows with both (the model's pass, the post-processing of every returned row).
        # Each is the largest of a forward that finished in time, lowered below those of one that did
        # not (a cold cache or a collection sends forwards of that size back to the worker until one is
        # fast again there).
        self._inline_limits = (0, 0)
        self._worker_jobs: deque[Future] = deque()  # submitted to the worker, in order; the oldest may run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}",
                                            initializer=name_os_thread, initargs=(f"model-{name}",))
        self._pending: dict[bytes, _Entry] = {}  # not started, insertion (= arrival) order
        self._in_flight: dict[bytes, _Entry] = {}  # pending or running: the dedupe index
        self._queued_tokens = 0
        self._tickets = 0  # requests admitted so far: the next request's ticket
        self._served: dict[str, int] = {}  # tenant -> tokens started, for tenants with sequences pending
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._closed = False

    # ---- public API -------------------------------------------------------------------------------

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def compute(self, items: list[tuple[bytes, Any]], tenant: str = "") -> list[SequenceLogits]:
        """Results for (key, LogitsTask) items of one request of `tenant`, in order. Raises
        ResourceExhausted when the queue is full."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is shutting down")
        self._ensure_started()
        admitted = time.perf_counter()
        entries = self._admit(items, tenant)
        self._forward_now(entries)
        try:
            results = [await asyncio.shield(entry.future) for entry in entries]
        finally:
            self._release(entries)
        _record_timings(entries, admitted)
        return results

    async def run_on_worker(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the model's worker thread, in turn with the batched forwards."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is shutting down")
        return await self._on_worker(partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Fail what is still queued, stop the scheduler, release the worker thread."""
        self._closed = True
        for entry in list(self._pending.values()):
            self._drop(entry)
            if not entry.future.done():
                entry.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
        if self._scheduler is not None:
            self._scheduler.cancel()
            try:
                await self._scheduler
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- admission and release -----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._scheduler is None:
            self._wakeup = asyncio.Event()
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.name}")

    def _admit(self, items: list[tuple[bytes, Any]], tenant: str) -> list[_Entry]:
        new_keys: dict[bytes, Any] = {}
        for key, task in items:
            if key not in self._in_flight and key not in new_keys:
                new_keys[key] = task
        new_tokens = sum(len(task.token_ids) for task in new_keys.values())
        if new_tokens > self._max_queue_tokens:
            raise InvalidArgument(
                f"the request holds {new_tokens} tokens, more than the queue ever admits "
                f"(max_queue_tokens={self._max_queue_tokens}); split it into smaller requests",
                field="sequences",
            )
        if new_keys and self._queued_tokens + new_tokens > self._max_queue_tokens:
            raise ResourceExhausted(
                f"model {self.name!r} has {self._queued_tokens} tokens queued; {new_tokens} more would exceed "
                f"max_queue_tokens={self._max_queue_tokens}; retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        ticket, self._tickets = self._tickets, self._tickets + 1
        entries = []
        for key, task in items:
            entry = self._in_flight.get(key)
            if entry is None:
                future = loop.create_future()
                future.add_done_callback(_consume_exception)
                entry = _Entry(key=key, task=task, tokens=len(task.token_ids), future=future, enqueued_at=now,
                               tenant=tenant, ticket=ticket, waiters=0)  # fmt: skip
                self._in_flight[key] = entry
                self._pending[key] = entry
                self._queued_tokens += entry.tokens
            elif key not in new_keys:
                self._metrics.deduplicated.labels(model=self.name).inc()
            entry.waiters += 1
            entries.append(entry)
        self._metrics.queue_tokens.labels(model=self.name).set(self._queued_tokens)
        assert self._wakeup is not None
        self._wakeup.set()
        return entries

    def _release(self, entries: list[_Entry]) -> None:
        """A request stops waiting (done, failed or cancelled): drop entries nobody waits for any more."""
        for entry in entries:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.started and not entry.future.done():
                self._drop(entry)
                entry.future.cancel()

    def _drop(self, entry: _Entry) -> None:
        if self._pending.pop(entry.key, None) is not None:
            self._queued_tokens -= entry.tokens
            self._metrics.queue_tokens.labels(model=self.name).set(self._queued_tokens)
        if self._in_flight.get(entry.key) is entry:
            del self._in_flight[entry.key]

    # ---- scheduling ------------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wait_for_batch()
            batch = self._take_batch()
            try:
                await self._execute(batch)
            except Exception:  # never let one batch kill the scheduler
                log.exception("batch on model %s failed outside the model call", self.name)
                for entry in batch:
                    self._resolve(entry, error=RuntimeError("batch failed"))

    async def _wait_for_batch(self) -> None:
        """Return when a batch is due: the oldest pending entry waited max_wait, or the budget is full."""
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            self._wakeup.clear()
            if not self._pending:
                await self._wakeup.wait()
                continue
            oldest = next(iter(self._pending.values()))
            remaining = oldest.enqueued_at + self._max_wait_s - loop.time()
            if remaining <= 0 or self._queued_tokens >= self._max_batch_tokens:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    def _take_batch(self) -> list[_Entry]:
        """The next batch (`_select_batch`), taken off the queue and marked started."""
        batch = self._select_batch()
        for entry in batch:
            entry.started = True
            self._pending.pop(entry.key)
            self._queued_tokens -= entry.tokens
        self._metrics.queue_tokens.labels(model=self.name).set(self._queued_tokens)
        return batch

    def _select_batch(self) -> list[_Entry]:
        """Requests in fair order while batch size x longest <= max_batch_tokens: the first one always
        (as much of it as fits, at least one sequence), every later one only whole and only if it does
        not raise the batch's longest sequence so far more than MAX_LONGEST_GROWTH x."""
        batch: list[_Entry] = []
        longest = 0
        for request in self._fair_order():
            if batch and (len(batch) + 1) * longest > self._max_batch_tokens:
                break  # full: any further sequence would break the budget
            if not batch:
                for entry in request:
                    if not batch or (len(batch) + 1) * max(longest, entry.tokens) <= self._max_batch_tokens:
                        batch.append(entry)
                        longest = max(longest, entry.tokens)
                continue
            request_longest = max(longest, *(entry.tokens for entry in request))
            if (request_longest <= MAX_LONGEST_GROWTH * longest
                    and (len(batch) + len(request)) * request_longest <= self._max_batch_tokens):  # fmt: skip
                batch.extend(request)
                longest = request_longest
        for entry in batch:
            self._served[entry.tenant] += entry.tokens
        # A canonical order (longest first, then by key): the same set of sequences always makes the same
        # padded tensor, so its results are bit-identical however the requests arrived. (Different sets
        # agree only to float32 rounding: kernels may block a batch differently.)
        return sorted(batch, key=lambda e: (-e.tokens, e.key))

    def _fair_order(self) -> Iterator[list[_Entry]]:
        """The pending sequences grouped by request, in the order they are owed the model: each tenant's
        requests by arrival; between tenants, the one with the fewest tokens served (counting the
        requests already yielded) goes next, the older request first on a tie. A tenant with nothing
        pending is forgotten; when it comes back it starts level with the least-served pending tenant."""
        requests: dict[str, dict[int, list[_Entry]]] = {}
        for entry in self._pending.values():  # arrival order
            requests.setdefault(entry.tenant, {}).setdefault(entry.ticket, []).append(entry)
        for tenant in [t for t in self._served if t not in requests]:
            del self._served[tenant]
        floor = min(self._served.values(), default=0)
        for tenant in requests:
            self._served.setdefault(tenant, floor)
        queues = {tenant: deque(by_ticket.values()) for tenant, by_ticket in requests.items()}
        turns = [(self._served[tenant], queue[0][0].ticket, tenant) for tenant, queue in queues.items()]
        heapq.heapify(turns)
        while turns:
            served, _, tenant = heapq.heappop(turns)
            request = queues[tenant].popleft()
            yield request
            if queues[tenant]:
                served += sum(entry.tokens for entry in request)
                heapq.heappush(turns, (served, queues[tenant][0][0].ticket, tenant))

    def _worker_idle(self) -> bool:
        """No call submitted to the worker is running or waiting. A call whose caller left stays counted
        until it ends (or is cancelled before it starts), since only then is the model free."""
        while self._worker_jobs and self._worker_jobs[0].done():  # one thread: they end in order
            self._worker_jobs.popleft()
        return not self._worker_jobs

    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        job = self._executor.submit(fn, *args)
        if self._inline_forward_s > 0:
            self._worker_idle()  # drops the finished ones: the deque holds what may still run, no more
            self._worker_jobs.append(job)
        return await asyncio.wrap_future(job)

    def _runs_inline(self, batch: list[_Entry]) -> bool:
        """Whether `batch`'s forward runs on the event loop's thread (module docstring)."""
        return self._fits_inline(batch) and self._loop_is_free()

    def _fits_inline(self, batch: list[_Entry]) -> bool:
        """Inline forwards are on, forwards this size finished in time, and the worker thread is idle."""
        if self._inline_forward_s <= 0:
            return False
        padded, rows = _size([entry.task for entry in batch])
        max_padded, max_rows = self._inline_limits
        return padded <= max_padded and rows <= max_rows and self._worker_idle()

    def _loop_is_free(self) -> bool:
        """Nothing waits for the loop: no sequence pending here, no other request in flight in the server."""
        return not self._pending and self._server_quiet()

    def _server_quiet(self) -> bool:
        return self._quiet is None or self._quiet()

    async def _execute(self, batch: list[_Entry]) -> None:
        try:
            if self._start_logits is not None:
                results = await self._forward_elsewhere(batch)
            elif self._runs_inline(batch):
                results = self._forward_inline(batch)
            else:
                results = await self._on_worker(self._forward, batch)
        except Exception as exc:
            if len(batch) == 1:
                self._resolve(batch[0], error=exc)
                return
            log.warning("batched forward of %d sequences on %s failed (%r); retrying each alone",
                        len(batch), self.name, exc)
            for entry in batch:
                try:
                    (result,) = await self._on_worker(self._forward, [entry])
                except Exception as single_exc:
                    self._resolve(entry, error=single_exc)
                else:
                    self._resolve(entry, result=result)
            return
        for entry, result in zip(batch, results, strict=True):
            self._resolve(entry, result=result)

    def _forward_now(self, entries: list[_Entry]) -> None:
        """A one-sequence request that finds nothing else pending and would run inline runs its forward here,
        in `compute`, with no fill window configured. The scheduler's task would take the same batch, but
        a turn of the event loop later, and its result would reach the request another turn after that (a
        one-sequence call's `queue` stage). Nothing here awaits, so the entry is resolved before the
        request can be cancelled; a failure is its own (a batch of one is not retried)."""
        if len(entries) != 1 or self._max_wait_s > 0 or self._start_logits is not None:
            return
        (entry,) = entries
        if len(self._pending) != 1 or self._pending.get(entry.key) is not entry:
            return  # another request's sequences wait, or ours joined one that already runs
        if not (self._fits_inline([entry]) and self._server_quiet()):
            return
        batch = self._take_batch()  # [entry]: a request's first sequence is always taken, whatever its length
        try:
            (result,) = self._forward_inline(batch)
        except Exception as exc:
            self._resolve(entry, error=exc)
        else:
            self._resolve(entry, result=result)

    def _forward_inline(self, batch: list[_Entry]) -> list[SequenceLogits]:
        results = self._forward(batch)
        self._metrics.inline_forwards.labels(model=self.name).inc()
        return results

    def _forward(self, batch: list[_Entry]) -> list[SequenceLogits]:
        """One padded forward (on the worker thread, or the loop's: `_runs_inline`), with its metrics, its
        entries' forward times and what it says of the forwards that may run inline."""
        tasks = [entry.task for entry in batch]
        begin = time.perf_counter()
        results = self._model.compute_logits(tasks)
        end = time.perf_counter()
        if self._inline_forward_s > 0:
            padded, rows = _size(tasks)
            max_padded, max_rows = self._inline_limits
            if end - begin <= self._inline_forward_s:
                self._inline_limits = (max(max_padded, padded), max(max_rows, rows))
            else:
                self._inline_limits = (min(max_padded, padded - 1), min(max_rows, rows - 1))
        self._record_forward(batch, begin, end, results)
        return results

    async def _forward_elsewhere(self, batch: list[_Entry]) -> list[SequenceLogits]:
        """One forward of an engine that computes on threads of its own (module docstring): submitted and
        awaited on the loop, converted on it or on the worker thread."""
        assert self._start_logits is not None
        tasks = [entry.task for entry in batch]
        begin = time.perf_counter()
        pending = self._start_logits(tasks)
        await asyncio.wait([asyncio.wrap_future(future) for future in pending.futures])
        entries = sum(task.num_rows * task.params.top_k for task in tasks)
        if entries <= INLINE_ENTRIES and self._loop_is_free():
            results = pending.finish()
        else:
            results = await self._on_worker(pending.finish)
        self._record_forward(batch, begin, time.perf_counter(), results)
        return results

    def _record_forward(self, batch: list[_Entry], begin: float, end: float, results: list[SequenceLogits]) -> None:
        """A finished forward's metrics and its entries' forward times; RuntimeError if the model returned
        another number of results than it had tasks."""
        for entry in batch:
            entry.forward_began, entry.forward_ended = begin, end
        if len(results) != len(batch):
            raise RuntimeError(f"model returned {len(results)} results for {len(batch)} tasks")
        lengths = [entry.tokens for entry in batch]
        labels = {"model": self.name}
        self._metrics.forward_seconds.labels(**labels).observe(end - begin)
        self._metrics.forward_tokens.labels(**labels).inc(sum(lengths))
        self._metrics.batch_tokens.labels(**labels).observe(len(batch) * max(lengths))
        self._metrics.batch_sequences.labels(**labels).observe(len(batch))

    def _resolve(self, entry: _Entry, *, result: SequenceLogits | None = None, error: BaseException | None = None) -> None:
        if self._in_flight.get(entry.key) is entry:
            del self._in_flight[entry.key]
        if entry.future.done():
            return
        if error is not None:
            entry.future.set_exception(error)
            return
        assert result is not None
        if self._on_result is not None:
            try:
                self._on_result(entry.key, result)
            except Exception:  # a failing cache must not fail the request
                log.exception("storing a result of model %s failed", self.name)
        entry.future.set_result(result)


def _size(tasks: list[Any]) -> tuple[int, int]:
    """(padded tokens, returned rows) of one forward over `tasks` (models.LogitsTask)."""
    return len(tasks) * max(len(task.token_ids) for task in tasks), sum(task.num_rows for task in tasks)


def _record_timings(entries: list[_Entry], admitted: float) -> None:
    """The request's `queue` (admission to its first forward's start) and `forward` (from then to its last
    forward's end) in its server-timing. A sequence joined while already running counts from admission."""
    if not entries:
        return
    began = max(admitted, min(entry.forward_began for entry in entries))
    context.record_timing("queue", began - admitted)
    context.record_timing("forward", max(entry.forward_ended for entry in entries) - began)
