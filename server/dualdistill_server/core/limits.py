"""Per-tenant limits: a token bucket over requested tokens and a cap on requests in flight.

Token bucket (`tenant_tokens_per_second` = r): each tenant's bucket holds at most C = r tokens (one
second's worth) and refills at r per second. A request costing n tokens is admitted when the level is
at least min(n, C), and then takes all n, so the level may go negative: a request larger than the bucket
still passes once the bucket is full, and pays for it by waiting out the debt. Over any window the
tenant gets at most C + r * seconds tokens. A refused request gets ResourceExhausted with Retry-After =
ceil((min(n, C) - level) / r), the time until it would pass.

Costs: /v1/logits and GetLogits charge the tokens of every sequence (cache hits included: the limit is on
what a tenant asks for, which keeps it predictable); /v1/generate charges prompts x n x max_new_tokens.

Concurrency (`tenant_max_concurrency`): requests of one tenant in flight at once, counted by the
transport from arrival to response (a StreamLogits call counts as one). A slot is freed when the
request ends in any way: answered, failed, cancelled or disconnected.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from ..errors import ResourceExhausted
from ..metrics import Metrics


class TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = rate
        self._clock = clock
        self.level = rate
        self._updated = clock()

    def take(self, cost: float) -> float:
        """Take `cost` tokens and return 0, or take nothing and return the seconds until it would pass."""
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now
        need = min(cost, self.capacity)
        if self.level >= need - 1e-9 * self.capacity:  # float refills land a hair short of exact
            self.level -= cost
            return 0.0
        return (need - self.level) / self.rate


class TenantLimits:
    """Both limits for every tenant (None = that limit is off). Lives on the event loop (no locks)."""

    def __init__(self, tokens_per_second: float | None, max_concurrency: int | None, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens_per_second = tokens_per_second
        self.max_concurrency = max_concurrency
        self._metrics = metrics
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    def charge(self, tenant: str, tokens: int) -> None:
        """Take `tokens` from the tenant's bucket, or raise ResourceExhausted with the wait."""
        if self.tokens_per_second is None:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(self.tokens_per_second, self._clock)
        wait = bucket.take(tokens)
        if wait > 0:
            self._metrics.tenant_rejections.labels(tenant=tenant, limit="tokens_per_second").inc()
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its rate of {self.tokens_per_second:g} tokens/s "
                f"(this request asks for {tokens}); retry in {wait:.2g} s",
                retry_after_seconds=max(1, math.ceil(wait)),
            )

    @contextlib.contextmanager
    def slot(self, tenant: str) -> Iterator[None]:
        """Hold one of the tenant's concurrency slots for the `with` body, or raise ResourceExhausted."""
        if self.max_concurrency is None:
            yield
            return
        active = self._in_flight.get(tenant, 0)
        if active >= self.max_concurrency:
            self._metrics.tenant_rejections.labels(tenant=tenant, limit="max_concurrency").inc()
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {active} request(s) in flight (max_concurrency="
                f"{self.max_concurrency}); wait for one to finish"
            )
        self._in_flight[tenant] = active + 1
        try:
            yield
        finally:
            left = self._in_flight[tenant] - 1
            if left:
                self._in_flight[tenant] = left
            else:
                del self._in_flight[tenant]

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)
