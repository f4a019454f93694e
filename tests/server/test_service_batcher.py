"""The dynamic batcher and the service core, in process, on the real tiny model.

`SpyModel` wraps the real ServedModel and records the sequence lengths of every forward (and can be told
to fail on a poisoned token), so these tests see exactly which sequences shared a forward.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dualdistill.protocol.params import LogitsParams
from dualdistill_server.config import ServerConfig
from dualdistill_server.core import TeacherService, sequence_key
from dualdistill_server.core.batcher import Batcher
from dualdistill_server.core.payload import INLINE_ENTRIES
from dualdistill_server.engines import PendingLogits
from dualdistill_server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelNotFound,
    ResourceExhausted,
    Unavailable,
)
from dualdistill_server.metrics import Metrics
from dualdistill_server.models import LogitsTask
from dualdistill_server.schemas import LogitsRequest
from tests.server.helpers import assert_same_result

POISON = 7  # SpyModel fails any forward containing a sequence that starts with this id


class SpyModel:
    """The real model, plus a record of each forward's sequence lengths and worker thread."""

    def __init__(self, model, poison: bool = False) -> None:
        self.model = model
        self.info = model.info
        self.poison = poison
        self.forwards: list[list[int]] = []
        self.threads: set[str] = set()

    def compute_logits(self, tasks):
        self.forwards.append([len(t.token_ids) for t in tasks])
        self.threads.add(threading.current_thread().name)
        if self.poison and any(int(t.token_ids[0]) == POISON for t in tasks):
            raise ValueError("poisoned sequence")
        return self.model.compute_logits(tasks)

    def whoami(self) -> str:
        return threading.current_thread().name


def _task(length: int, first: int = 5, top_k: int = 4, seed: int = 0) -> LogitsTask:
    ids = np.arange(length, dtype=np.int64) % 300
    ids[0] = first
    return LogitsTask(token_ids=ids, start=1, params=LogitsParams(top_k=top_k, samples=8, seed=seed))


def _item(task: LogitsTask) -> tuple[bytes, LogitsTask]:
    return sequence_key("fp", task), task


def _batcher(model, **overrides) -> Batcher:
    settings = {"max_batch_tokens": 4096, "max_wait_s": 0.05, "max_queue_tokens": 100_000, "metrics": Metrics()}
    settings.update(overrides)
    return Batcher("tiny", model, **settings)


def _run(coro):
    return asyncio.run(coro)


class OwnThreadsModel(SpyModel):
    """An engine that computes on a thread of its own, as vLLM's step thread: `start_logits` hands each
    task's forward to that thread ("engine_0") and returns at once; `finish` (the conversion) records the
    thread it runs on."""

    concurrent_generate = True

    def __init__(self, model, poison: bool = False) -> None:
        super().__init__(model, poison)
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.finish_threads: set[str] = set()

    def start_logits(self, tasks) -> PendingLogits:
        futures = [self.engine.submit(self.compute_logits, [task]) for task in tasks]

        def finish():
            self.finish_threads.add(threading.current_thread().name)
            return [future.result()[0] for future in futures]

        return PendingLogits(futures, finish)


def test_concurrent_requests_share_one_forward_and_match_single_forwards(tiny_model) -> None:
    spy = SpyModel(tiny_model)
    tasks = [_task(n, top_k=k) for n, k in [(9, 3), (14, 5), (11, 1), (20, 8), (6, 2)]]  # params differ

    async def main():
        batcher = _batcher(spy, max_wait_s=0.2)
        results = await asyncio.gather(*(batcher.compute([_item(t)]) for t in tasks))
        await batcher.close()
        return results

    results = _run(main())
    assert len(spy.forwards) == 1 and sorted(spy.forwards[0]) == [6, 9, 11, 14, 20], spy.forwards
    for task, (result,) in zip(tasks, results, strict=True):
        assert_same_result(result, tiny_model.compute_logits([task])[0])


class GatedModel(SpyModel):
    """A SpyModel whose first forward waits for `release` (set from the test), so requests can queue behind it."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.started = threading.Event()
        self.release = threading.Event()

    def compute_logits(self, tasks):
        if not self.started.is_set():
            self.started.set()
            self.release.wait(timeout=30)
        return super().compute_logits(tasks)


def test_without_a_fill_window_an_idle_batcher_starts_at_once_and_a_busy_one_batches(tiny_model) -> None:
    # The server's default (max_wait_ms 0): the first request runs alone, right away; the requests that
    # arrive while it runs share the next forward.
    assert ServerConfig().max_wait_ms == 0
    gated = GatedModel(tiny_model)

    async def main():
        batcher = _batcher(gated, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.compute([_item(_task(9))]))
        assert await asyncio.to_thread(gated.started.wait, 10), "the first forward never started"
        later = [asyncio.ensure_future(batcher.compute([_item(_task(n))])) for n in (12, 15, 20)]
        await asyncio.sleep(0.05)  # every later request is queued while the first forward runs
        gated.release.set()
        await asyncio.gather(first, *later)
        await batcher.close()

    _run(main())
    assert gated.forwards == [[9], [20, 15, 12]], gated.forwards


def test_batches_group_similar_lengths_within_the_token_budget(tiny_model) -> None:
    spy = SpyModel(tiny_model)
    lengths = [10, 200, 12, 190]

    async def main():
        batcher = _batcher(spy, max_batch_tokens=400, max_wait_s=0.1)
        await asyncio.gather(*(batcher.compute([_item(_task(n))]) for n in lengths))
        await batcher.close()

    _run(main())
    # First come first (10); 200 would more than double the longest (padding), so it is passed over for 12;
    # 190 likewise; the next forward starts with 200 and takes 190 (2 x 200 <= 400).
    assert spy.forwards == [[12, 10], [200, 190]]  # each forward in canonical order: longest first
    assert all(len(f) * max(f) <= 400 for f in spy.forwards)


def test_a_sequence_longer_than_the_budget_runs_alone(tiny_model) -> None:
    spy = SpyModel(tiny_model)

    async def main():
        batcher = _batcher(spy, max_batch_tokens=64)
        (result,) = await batcher.compute([_item(_task(100))])
        await batcher.close()
        return result

    assert _run(main()).num_rows == 99
    assert spy.forwards == [[100]]


def test_cancelled_request_is_dropped_before_its_forward(tiny_model) -> None:
    spy = SpyModel(tiny_model)
    metrics = Metrics()

    async def main():
        batcher = _batcher(spy, max_wait_s=0.3, metrics=metrics)
        waiting = asyncio.ensure_future(batcher.compute([_item(_task(30)), _item(_task(40))]))
        await asyncio.sleep(0.05)
        assert batcher.queued_tokens == 70
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        queued_after_cancel = batcher.queued_tokens
        await asyncio.sleep(0.4)  # past the batching window: nothing may run
        await batcher.close()
        return queued_after_cancel

    assert _run(main()) == 0
    assert spy.forwards == []
    assert metrics.queue_tokens.labels(model="tiny")._value.get() == 0


@pytest.mark.parametrize("own_threads", [False, True], ids=["worker", "engine-own-threads"])
def test_model_error_reaches_only_the_request_whose_sequence_fails(tiny_model, own_threads) -> None:
    # engine-own-threads: the batch fails in PendingLogits.finish and is retried task by task on the worker
    spy = (OwnThreadsModel if own_threads else SpyModel)(tiny_model, poison=True)
    good_a, bad, good_b = _task(8), _task(9, first=POISON), _task(10)

    async def main():
        batcher = _batcher(spy, max_wait_s=0.1)
        outcomes = await asyncio.gather(
            batcher.compute([_item(good_a)]), batcher.compute([_item(bad)]), batcher.compute([_item(good_b)]),
            return_exceptions=True,
        )
        await batcher.close()
        return outcomes

    first, second, third = _run(main())
    assert isinstance(second, ValueError)
    assert_same_result(first[0], tiny_model.compute_logits([good_a])[0])
    assert_same_result(third[0], tiny_model.compute_logits([good_b])[0])
    batched = [[10], [9], [8]] if own_threads else [[10, 9, 8]]  # OwnThreadsModel: one forward per task
    retried = spy.forwards[len(batched):]
    assert spy.forwards[: len(batched)] == batched and sorted(retried) == [[8], [9], [10]]


def test_full_queue_refuses_with_resource_exhausted_and_oversized_request_is_invalid(tiny_model) -> None:
    async def main():
        batcher = _batcher(SpyModel(tiny_model), max_wait_s=0.3, max_queue_tokens=100)
        first = asyncio.ensure_future(batcher.compute([_item(_task(60))]))
        await asyncio.sleep(0.02)
        with pytest.raises(ResourceExhausted):
            await batcher.compute([_item(_task(50))])
        with pytest.raises(InvalidArgument) as oversized:
            await batcher.compute([_item(_task(70)), _item(_task(71))])
        (result,) = await first  # the queued request is unaffected
        await batcher.close()
        return oversized.value, result

    error, result = _run(main())
    assert error.field == "sequences" and "max_queue_tokens=100" in error.message
    assert result.num_rows == 59


def test_identical_sequences_in_flight_are_computed_once(tiny_model) -> None:
    spy = SpyModel(tiny_model)
    metrics = Metrics()

    async def main():
        batcher = _batcher(spy, metrics=metrics)
        a, b = await asyncio.gather(batcher.compute([_item(_task(12))]), batcher.compute([_item(_task(12))]))
        await batcher.close()
        return a[0], b[0]

    a, b = _run(main())
    assert a is b and spy.forwards == [[12]]
    assert metrics.deduplicated.labels(model="tiny")._value.get() == 1


def test_generation_runs_on_the_forward_worker_thread(tiny_model) -> None:
    spy = SpyModel(tiny_model)

    async def main():
        batcher = _batcher(spy)
        await batcher.compute([_item(_task(5))])
        name = await batcher.run_on_worker(spy.whoami)
        await batcher.close()
        return name

    assert {_run(main())} == spy.threads


class PacedModel(SpyModel):
    """A SpyModel whose forwards take at least `delay` seconds more (set from the test between calls)."""

    delay = 0.0

    def compute_logits(self, tasks):
        time.sleep(self.delay)
        return super().compute_logits(tasks)


def _inline_batcher(model, metrics: Metrics, quiet=lambda: True) -> Batcher:
    return _batcher(model, max_wait_s=0.0, metrics=metrics, inline_forward_s=1.0, quiet=quiet)


def test_an_idle_servers_short_forwards_run_on_the_loops_thread_after_one_on_the_worker(tiny_model) -> None:
    spy, metrics = SpyModel(tiny_model), Metrics()
    tasks = [_task(12, seed=s) for s in range(3)]

    async def main():
        batcher = _inline_batcher(spy, metrics)
        threads, results = [], []
        for task in tasks:
            spy.threads.clear()
            results.append((await batcher.compute([_item(task)]))[0])
            threads.append(spy.threads.pop())
        await batcher.close()
        return threads, results

    threads, results = _run(main())
    # nothing is known of the model's speed before its first forward: that one runs on the worker
    assert threads[0].startswith("model-tiny") and threads[1:] == [threading.main_thread().name] * 2, threads
    assert metrics.inline_forwards.labels(model="tiny")._value.get() == 2
    for task, result in zip(tasks, results, strict=True):
        assert_same_result(result, tiny_model.compute_logits([task])[0])


def test_an_idle_one_sequence_request_runs_its_inline_forward_in_its_own_task(tiny_model) -> None:
    """No turn of the event loop between the request and its forward: it runs in the request's own task, not
    the scheduler's. A request of two sequences still goes through the scheduler's task."""
    spy, names = SpyModel(tiny_model), []
    compute = spy.compute_logits

    def named(tasks):
        try:
            names.append(asyncio.current_task().get_name())
        except RuntimeError:  # the worker thread has no event loop
            names.append("worker")
        return compute(tasks)

    spy.compute_logits = named
    tasks = [_task(12, seed=s) for s in range(4)]

    async def main():
        batcher = _inline_batcher(spy, Metrics())
        await batcher.compute([_item(tasks[0])])  # the first forward runs on the worker
        one = await asyncio.create_task(batcher.compute([_item(tasks[1])]), name="one-sequence")
        two = await asyncio.create_task(batcher.compute([_item(tasks[2]), _item(tasks[3])]), name="two-sequences")
        await batcher.close()
        return [*one, *two]

    results = _run(main())
    assert names == ["worker", "one-sequence", "batcher-tiny"]
    for task, result in zip(tasks[1:], results, strict=True):
        assert_same_result(result, tiny_model.compute_logits([task])[0])


def test_forwards_go_to_the_worker_when_the_server_is_busy_longer_or_slow(tiny_model) -> None:
    paced, busy = PacedModel(tiny_model), [False]

    async def main():
        batcher = _batcher(paced, max_wait_s=0.0, inline_forward_s=0.2, quiet=lambda: not busy[0])
        where = []

        async def call(length: int) -> None:
            paced.threads.clear()
            await batcher.compute([_item(_task(length, seed=len(where)))])
            where.append("loop" if paced.threads.pop() == threading.main_thread().name else "worker")

        await call(12)  # learns: 12 tokens fit
        await call(12)
        busy[0] = True  # another request in flight: the loop stays free for it
        await call(12)
        busy[0] = False
        await call(13)  # longer than any forward seen within the bound
        await call(13)  # ...until one was
        paced.delay = 0.3  # over the bound: 13 tokens and more go back to the worker
        await call(13)
        paced.delay = 0.0
        await call(12)  # 12 still fit
        await call(13)  # measured fast again on the worker
        await call(13)
        await batcher.close()
        return where

    assert _run(main()) == ["worker", "loop", "worker", "worker", "loop", "loop", "loop", "worker", "loop"]


def test_more_returned_rows_than_any_forward_in_time_go_to_the_worker(tiny_model) -> None:
    # The same 12 tokens: a forward returning 6 rows was in time; one returning 11 has not been seen.
    spy = SpyModel(tiny_model)

    def task(start: int, seed: int) -> LogitsTask:
        return LogitsTask(token_ids=np.arange(12, dtype=np.int64) + seed, start=start, params=LogitsParams(top_k=4))

    async def main():
        batcher = _inline_batcher(spy, Metrics())
        where = []
        for start, seed in [(6, 0), (6, 1), (1, 2), (1, 3)]:
            spy.threads.clear()
            await batcher.compute([_item(task(start, seed))])
            where.append("loop" if spy.threads.pop() == threading.main_thread().name else "worker")
        await batcher.close()
        return where

    assert _run(main()) == ["worker", "loop", "worker", "loop"]


def test_the_worker_calls_kept_for_the_inline_check_do_not_pile_up(tiny_model) -> None:
    # Finished calls are dropped as new ones are sent (and none are kept with inline forwards off): a
    # finished call holds its result, so a long-running server would otherwise keep every one.
    spy = PacedModel(tiny_model)
    spy.delay = 0.02  # over the bound below: every forward stays on the worker

    async def main():
        kept = []
        for inline_forward_s in (0.0, 0.001):
            batcher = _batcher(spy, max_wait_s=0.0, inline_forward_s=inline_forward_s, quiet=lambda: True)
            for seed in range(12):
                await batcher.compute([_item(_task(9, seed=seed))])
            kept.append(len(batcher._worker_jobs))
            await batcher.close()
        return kept

    assert _run(main()) == [0, 1]


def test_no_forward_runs_on_the_loop_while_the_worker_holds_the_model(tiny_model) -> None:
    # A call on the worker (generation) whose caller left still holds the model until it ends: a forward
    # on the loop meanwhile would race with it on the model.
    spy = SpyModel(tiny_model)
    release, order = threading.Event(), []

    def generation() -> None:
        release.wait(timeout=30)
        order.append("generation")

    async def main():
        batcher = _inline_batcher(spy, Metrics())
        await batcher.compute([_item(_task(12))])  # learns that 12 tokens fit
        waiting = asyncio.ensure_future(batcher.run_on_worker(generation))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the caller leaves; the call goes on
        spy.threads.clear()
        forward = asyncio.ensure_future(batcher.compute([_item(_task(12, seed=1))]))
        await asyncio.sleep(0.05)
        assert not forward.done() and order == [], "the forward did not wait for the worker's call"
        release.set()
        await forward
        order.append("forward")
        await batcher.close()

    _run(main())
    assert order == ["generation", "forward"] and spy.threads == {"model-tiny_0"}, (order, spy.threads)


# ---- the service core ----------------------------------------------------------------------------------


def _request(**fields) -> LogitsRequest:
    body = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
    body.update(fields)
    return LogitsRequest.model_validate(body)


def test_service_readiness_states_and_listener() -> None:
    seen: list[bool] = []

    async def main():
        service = TeacherService({}, ServerConfig())
        service.subscribe(seen.append)
        with pytest.raises(Unavailable, match="loading"):
            await service.logits(_request())
        return service

    service = _run(main())
    assert seen == [False] and not service.ready


def test_service_limits_deadline_and_drain(tiny_model) -> None:
    config = ServerConfig(max_wait_ms=300, max_samples=16)

    async def main():
        service = TeacherService({"tiny": tiny_model}, config)
        assert service.ready
        with pytest.raises(ModelNotFound) as missing:
            await service.logits(_request(model="nope"))
        assert missing.value.field == "model" and "tiny" in missing.value.message
        with pytest.raises(InvalidArgument) as too_many:
            await service.logits(_request(mode="sample", samples=17))
        assert too_many.value.field == "samples"
        with pytest.raises(InvalidArgument) as oov:
            await service.logits(_request(sequences=[{"token_ids": [1, 2, 320], "start": 1}]))
        assert oov.value.field == "sequences[0].token_ids[2]"
        with pytest.raises(DeadlineExceeded):
            await service.logits(_request(deadline_seconds=0.05))  # the batching window is 300 ms
        assert service.active_requests == 0
        service.start_draining()
        assert not service.ready
        with pytest.raises(Unavailable, match="shutting down"):
            await service.logits(_request())
        await service.close()

    _run(main())


def test_an_engine_on_threads_of_its_own_is_awaited_on_the_loop_and_converted_there_when_quiet(tiny_model) -> None:
    model = OwnThreadsModel(tiny_model)
    loop_thread = threading.main_thread().name
    tasks = [_task(n, top_k=k) for n, k in [(9, 3), (14, 5), (11, 1)]]

    async def main():
        service = TeacherService({"tiny": model}, ServerConfig(inline_forward_ms=1000))
        alone = []
        for task in tasks:  # one call at a time: the server is quiet for each
            body = {"token_ids": task.token_ids.tolist(), "start": 1}
            alone.append(await service.logits(_request(sequences=[body], top_k=task.params.top_k)))
        idle_finishes = set(model.finish_threads)
        busy = await asyncio.gather(*(  # several requests in flight: conversions go to the model's worker
            service.logits(_request(sequences=[{"token_ids": [5, 6, 7, n], "start": 1}])) for n in range(20, 26)
        ))
        await service.close()
        return alone, idle_finishes, busy

    alone, idle_finishes, busy = _run(main())
    assert model.threads == {"engine_0"}  # never the loop's thread, never the model's worker
    assert idle_finishes == {loop_thread}
    assert any(name.startswith("model-tiny") for name in model.finish_threads), model.finish_threads
    for task, result in zip(tasks, alone, strict=True):
        assert_same_result(result.results[0], tiny_model.compute_logits([task])[0])
    assert len(busy) == 6 and all(len(result.results) == 1 for result in busy)


def test_an_engines_large_results_are_converted_on_the_worker_even_when_quiet(tiny_model) -> None:
    model = OwnThreadsModel(tiny_model)
    small, large = _task(12, top_k=8), _task(200, top_k=64)
    assert small.num_rows * 8 <= INLINE_ENTRIES < large.num_rows * 64

    async def main():
        batcher = _batcher(model, max_wait_s=0.0, quiet=lambda: True)
        (small_result,) = await batcher.compute([_item(small)])
        small_threads = set(model.finish_threads)
        (large_result,) = await batcher.compute([_item(large)])
        await batcher.close()
        return small_result, small_threads, large_result

    small_result, small_threads, large_result = _run(main())
    assert small_threads == {threading.main_thread().name}
    assert {name for name in model.finish_threads - small_threads if name.startswith("model-tiny")}
    assert_same_result(small_result, tiny_model.compute_logits([small])[0])
    assert_same_result(large_result, tiny_model.compute_logits([large])[0])


def test_the_service_runs_an_idle_calls_forward_inline_unless_told_not_to_or_the_engine_computes_elsewhere(
    tiny_model,
) -> None:
    def forward_threads(model: SpyModel, config: ServerConfig) -> set[str]:
        async def main():
            service = TeacherService({"tiny": model}, config)
            for n in (8, 9, 10):  # one call at a time: the server is idle for each
                await service.logits(_request(sequences=[{"token_ids": [5, 6, 7, n], "start": 1}]))
            await service.close()

        _run(main())
        return model.threads

    loop_thread = threading.main_thread().name  # asyncio.run's loop runs on the calling thread
    generous = ServerConfig(inline_forward_ms=1000)  # any forward of the tiny model, however busy the machine
    assert loop_thread in forward_threads(SpyModel(tiny_model), generous)
    assert loop_thread not in forward_threads(SpyModel(tiny_model), ServerConfig(inline_forward_ms=0))
    assert loop_thread not in forward_threads(OwnThreadsModel(tiny_model), generous)
