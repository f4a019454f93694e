"""Prefetcher: order, the depth bound, errors at their batch in the consumer thread, clean close, stall time."""

from __future__ import annotations

import random
import threading
import time

import pytest

from dualdistill.prefetch import Prefetcher


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dualdistill-prefetch")]


class Recorder:
    """A fetch function that records, under a lock, when each fetch started and ended, and how many ran."""

    def __init__(self, seconds=lambda batch: 0.0, fail_at=()):
        self.lock = threading.Lock()
        self.running = self.max_running = 0
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}
        self.seconds = seconds
        self.fail_at = set(fail_at)
        self.threads: set[str] = set()

    def __call__(self, batch: int) -> int:
        with self.lock:
            self.started[batch] = time.perf_counter()
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.seconds(batch))
            if batch in self.fail_at:
                raise ValueError(f"teacher failed on batch {batch}")
            return batch * batch
        finally:
            with self.lock:
                self.running -= 1
                self.ended[batch] = time.perf_counter()


def test_order_preserved_with_uneven_fetch_times():
    rng = random.Random(0)
    durations = {b: rng.uniform(0, 0.02) for b in range(30)}
    fetch = Recorder(seconds=durations.get)
    with Prefetcher(fetch, range(30), depth=4) as prefetcher:
        pairs = list(prefetcher)
    assert pairs == [(b, b * b) for b in range(30)]
    assert prefetcher.stats.batches == 30
    assert fetch.threads and all(name.startswith("dualdistill-prefetch") for name in fetch.threads)


@pytest.mark.parametrize(("depth", "workers"), [(1, None), (3, None), (3, 1), (5, 2)])
def test_depth_bound_respected(depth, workers):
    fetch = Recorder(seconds=lambda b: 0.002)
    delivered: dict[int, float] = {}
    with Prefetcher(fetch, range(25), depth=depth, workers=workers) as prefetcher:
        for batch, _result in prefetcher:
            delivered[batch] = time.perf_counter()
            time.sleep(
                0.004
            )  # a consumer slower than the fetches: the prefetcher runs as far ahead as allowed
    assert sorted(fetch.started) == list(range(25))
    # At most `depth` fetches outstanding: fetch b starts only once fetch b - depth has finished and been
    # handed over (its next() call refills the window). Handing over ends after the refill, hence `ended`.
    for b in range(depth, 25):
        assert fetch.started[b] >= fetch.ended[b - depth]
        assert fetch.started[b] <= delivered[b - depth] + 1.0  # ...and not much later: the window is used
    assert fetch.max_running <= (workers or depth)
    assert prefetcher.stats.max_outstanding == depth


def test_fetch_error_surfaces_at_its_batch_in_the_consumer_thread():
    fetch = Recorder(seconds=lambda b: 0.001, fail_at={3})
    seen, errors = [], []
    with Prefetcher(fetch, range(6), depth=2) as prefetcher:
        iterator = iter(prefetcher)
        while True:
            try:
                batch, result = next(iterator)
            except StopIteration:
                break
            except ValueError as exc:
                errors.append((len(seen), str(exc), threading.current_thread() is threading.main_thread()))
                continue
            seen.append(batch)
    assert seen == [0, 1, 2, 4, 5]  # the failed batch is reported at its place, iteration goes on
    assert errors == [(3, "teacher failed on batch 3", True)]


def test_error_in_plain_for_loop_stops_at_that_batch():
    fetch = Recorder(fail_at={2})
    seen = []
    with pytest.raises(ValueError, match="batch 2"), Prefetcher(fetch, range(10), depth=3) as prefetcher:
        for batch, _ in prefetcher:
            seen.append(batch)
    assert seen == [0, 1]
    assert not prefetch_threads()


def test_error_from_the_batch_iterable_surfaces_at_its_position():
    def batches():
        yield from range(4)
        raise RuntimeError("data loader broke after 4 batches")

    seen = []
    with (
        pytest.raises(RuntimeError, match="after 4 batches"),
        Prefetcher(Recorder(), batches(), depth=3) as p,
    ):
        for batch, _ in p:
            seen.append(batch)
    assert seen == [0, 1, 2, 3]


def test_close_mid_run_joins_threads_and_skips_unstarted_fetches():
    fetch = Recorder(seconds=lambda b: 0.05)
    prefetcher = Prefetcher(fetch, range(100), depth=4, workers=2)
    next(prefetcher)
    assert prefetch_threads()
    prefetcher.close()
    assert not prefetch_threads()
    assert fetch.running == 0 and sorted(fetch.started) == sorted(fetch.ended)  # nothing left running
    assert len(fetch.started) <= 1 + 4  # the consumed batch and at most `depth` ahead; the rest never ran
    with pytest.raises(StopIteration):
        next(prefetcher)
    prefetcher.close()  # idempotent


def test_exhaustion_closes_by_itself():
    prefetcher = Prefetcher(Recorder(), range(3), depth=2)
    assert [b for b, _ in prefetcher] == [0, 1, 2]
    assert not prefetch_threads()


def test_wait_time_near_zero_when_fetch_is_faster_than_training():
    fast, slow = Recorder(seconds=lambda b: 0.005), Recorder(seconds=lambda b: 0.06)
    step = 0.03  # the "training step"
    with Prefetcher(fast, range(10), depth=2) as prefetcher:
        time.sleep(step)  # model setup before the first step; fetching has already started
        for _ in prefetcher:
            time.sleep(step)
    fast_wait = prefetcher.stats.wait_seconds
    with Prefetcher(slow, range(10), depth=2, workers=1) as prefetcher:
        time.sleep(step)
        for _ in prefetcher:
            time.sleep(step)
    slow_wait = prefetcher.stats.wait_seconds
    # Fast teacher: no stall at all (allow scheduler noise). Slow teacher, one worker: each batch waits about
    # fetch - step = 0.03 s, so about 0.3 s in all.
    assert fast_wait < 0.05, fast_wait
    assert slow_wait > 0.15, slow_wait
    assert prefetcher.stats.fetch_seconds >= 10 * 0.06
    assert 0 < prefetcher.stats.stall_share(1.0) == slow_wait


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(Recorder(), [], depth=0)
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(Recorder(), [], depth=2, workers=3)
