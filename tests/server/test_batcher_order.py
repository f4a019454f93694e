"""The batcher's ordering policy (core/batcher.py `_select_batch` / `_fair_order`), without a model.

Requests are admitted as the service admits them (`_admit`, one per request, with its tenant); the
batches are then taken the way the scheduler takes them (`_take_batch`), so each test reads the order
in which requests get the model. The expected orders are written out by hand from the policy: requests
first come, first served within a tenant, whole where they fit, tenants taking turns by tokens served.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from dualdistill_server.core.batcher import MAX_LONGEST_GROWTH, Batcher
from dualdistill_server.metrics import Metrics


class _Queue:
    """A batcher whose queue is filled by hand; `batches()` names what each forward would take."""

    def __init__(self, max_batch_tokens: int) -> None:
        self.batcher = Batcher("m", model=None, max_batch_tokens=max_batch_tokens, max_wait_s=0.0,
                               max_queue_tokens=1_000_000, metrics=Metrics())  # fmt: skip
        self.batcher._wakeup = asyncio.Event()  # admitted without starting the scheduler: no forward runs
        self.names: dict[bytes, str] = {}

    def request(self, name: str, *lengths: int, tenant: str = "") -> None:
        """One request of len(lengths) sequences, named name0, name1, ... (or `name` for one sequence)."""
        items = []
        for i, length in enumerate(lengths):
            key = f"{name}/{i}".encode()
            self.names[key] = name if len(lengths) == 1 else f"{name}{i}"
            items.append((key, SimpleNamespace(token_ids=np.zeros(length, dtype=np.int64))))
        self.batcher._admit(items, tenant)

    def batches(self, limit: int | None = None) -> list[list[str]]:
        """Take batches until the queue is empty (or `limit` batches); each sorted by name."""
        out = []
        while self.batcher._pending and (limit is None or len(out) < limit):
            out.append(sorted(self.names[entry.key] for entry in self.batcher._take_batch()))
        return out


def _order(fill, max_batch_tokens: int, limit: int | None = None) -> list[list[str]]:
    async def main() -> list[list[str]]:
        queue = _Queue(max_batch_tokens)
        fill(queue)
        return queue.batches(limit)

    return asyncio.run(main())


def test_requests_are_served_first_come_not_by_length_neighbours() -> None:
    # Room for 3 sequences of 50. b (30) came second: it goes with a, although c, d, e match a's length
    # (the former policy took a's length neighbours c, d and left b for later).
    def fill(q: _Queue) -> None:
        for name, length in [("a", 50), ("b", 30), ("c", 50), ("d", 50), ("e", 50)]:
            q.request(name, length)

    assert _order(fill, max_batch_tokens=150) == [["a", "b", "c"], ["d", "e"]]


def test_a_request_that_fits_is_never_split_over_two_forwards() -> None:
    # Room for 4 sequences of 20: a (3) is first; b (2) would overflow, so it waits whole for the next
    # forward and c (1) fills the gap.
    def fill(q: _Queue) -> None:
        q.request("a", 20, 20, 20)
        q.request("b", 20, 20)
        q.request("c", 20)

    assert _order(fill, max_batch_tokens=80) == [["a0", "a1", "a2", "c"], ["b0", "b1"]]


def test_the_first_request_is_split_when_it_is_larger_than_a_forward() -> None:
    def fill(q: _Queue) -> None:
        q.request("a", 20, 20, 20, 20, 20)
        q.request("b", 20)

    assert _order(fill, max_batch_tokens=60) == [["a0", "a1", "a2"], ["a3", "a4", "b"]]


def test_a_much_longer_request_waits_for_its_own_forward_and_is_not_overtaken_there() -> None:
    # b is more than MAX_LONGEST_GROWTH x a's length: it would make a, c, d pay its padding, so it is
    # passed over once; then it is first, and the younger e (short) joins it instead of overtaking it.
    assert MAX_LONGEST_GROWTH == 8

    def fill(q: _Queue) -> None:
        for name, length in [("a", 10), ("b", 100), ("c", 10), ("d", 20)]:
            q.request(name, length)

    async def main() -> list[list[str]]:
        queue = _Queue(max_batch_tokens=400)
        fill(queue)
        first = queue.batches(limit=1)
        queue.request("e", 10)
        return first + queue.batches()

    assert asyncio.run(main()) == [["a", "c", "d"], ["b", "e"]]


def test_tenants_take_turns_however_many_requests_one_of_them_queued() -> None:
    # Tenant x queues 6 requests before tenant y's 2 arrive; with room for 2 sequences per forward, y is
    # served in the first and second forwards, not after all of x's (first come, first served would).
    def fill(q: _Queue) -> None:
        for i in range(6):
            q.request(f"x{i}", 20, tenant="x")
        for i in range(2):
            q.request(f"y{i}", 20, tenant="y")

    assert _order(fill, max_batch_tokens=40) == [["x0", "y0"], ["x1", "y1"], ["x2", "x3"], ["x4", "x5"]]


def test_turns_count_tokens_not_requests() -> None:
    # x's sequences are about twice as long as y's: y is served about two requests per x request (taking
    # turns by requests would alternate x, y, x, y).
    def fill(q: _Queue) -> None:
        for i in range(3):
            q.request(f"x{i}", 40, tenant="x")
        for i in range(8):
            q.request(f"y{i}", 21, tenant="y")

    # room for one sequence per forward (2 x 21 > 40), so the batches are the service order itself
    order = [names[0] for names in _order(fill, max_batch_tokens=40)]
    assert order == ["x0", "y0", "y1", "x1", "y2", "y3", "x2", "y4", "y5", "y6", "y7"]


def test_a_tenant_that_was_idle_comes_back_level_without_credit_or_debt() -> None:
    async def main() -> list[list[str]]:
        queue = _Queue(max_batch_tokens=20)  # one sequence of 20 per forward
        for i in range(5):  # y alone: it is served 100 tokens while x has nothing queued
            queue.request(f"y{i}", 20, tenant="y")
        queue.batches()
        for i in range(3):  # x arrives first, then y again: both start level, so they alternate
            queue.request(f"x{i}", 20, tenant="x")
        for i in range(5, 8):
            queue.request(f"y{i}", 20, tenant="y")
        return queue.batches()

    order = [names[0] for names in asyncio.run(main())]
    assert order == ["x0", "y5", "x1", "y6", "x2", "y7"]
