"""Retries with capped exponential backoff and full jitter, the same for every transport.

    attempt n (n = 1 is the first retry) sleeps  max(U(0, min(max_backoff, initial_backoff * multiplier^(n-1))),
                                                     min(Retry-After, max_retry_after))

Full jitter (a uniform draw below the exponential ceiling) spreads the retries of many trainers that
lost the same teacher at the same moment, so a restarted server is not hit by one synchronized wave.
A server's Retry-After is a floor, never ignored. Only failures that a later attempt can fix are retried
(see `RetryPolicy.retry_statuses`); every teacher request is idempotent, so repeating one is safe.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dualdistill.bounds import check_int, check_range
from dualdistill.client.errors import TeacherServiceError

T = TypeVar("T")
RetryHook = Callable[[int, TeacherServiceError, float], None]  # (retry number, error, delay in s)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10  # attempts in all, the first included; 1 disables retries
    initial_backoff: float = 0.5  # s, ceiling of the first retry's jittered delay
    max_backoff: float = 30.0  # s, cap of the exponential ceiling
    multiplier: float = 2.0  # growth of the ceiling per retry
    max_retry_after: float = 60.0  # s, cap on how long a server's Retry-After may make us wait
    # HTTP statuses worth another attempt: 429 overloaded, 502/503 restarting or draining, 504 timed out.
    # A failure with no response counts as 503 (connection refused/reset) or 504 (our timeout fired).
    # 4xx validation errors (401, 404, 413, 422) are never retried: the same request fails the same way.
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def __post_init__(self) -> None:
        check_int("max_attempts", self.max_attempts, 1)
        check_range("max_backoff", self.max_backoff, 0.0)
        check_range("initial_backoff", self.initial_backoff, 0.0, self.max_backoff)
        check_range("multiplier", self.multiplier, 1.0)

    def should_retry(self, error: TeacherServiceError, attempt: int) -> bool:
        """Whether to make attempt `attempt + 1` after `error` ended attempt `attempt`."""
        return attempt < self.max_attempts and error.effective_status in self.retry_statuses

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number `retry` (1-based); see the module docstring."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        jittered = (rng or random).uniform(0.0, ceiling)
        floor = min(retry_after, self.max_retry_after) if retry_after is not None else 0.0
        return max(jittered, floor)


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass
class CallStats:
    """Counters of one client, safe to read from any thread (a trainer logs them)."""

    calls: int = 0  # public method calls
    attempts: int = 0  # requests sent, retries included
    retries: int = 0
    failures: int = 0  # calls that raised after their last attempt
    backoff_seconds: float = 0.0  # time slept between attempts
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def call_with_retry(
    attempt_fn: Callable[[], T], policy: RetryPolicy, stats: CallStats, on_retry: RetryHook | None = None
) -> T:
    """Run `attempt_fn` until it returns, or raises a TeacherServiceError not worth retrying."""
    stats.add(calls=1)
    attempt = 1
    while True:
        stats.add(attempts=1)
        try:
            return attempt_fn()
        except TeacherServiceError as error:
            delay = _next_delay(error, attempt, policy, stats, on_retry)
        time.sleep(delay)
        attempt += 1


async def acall_with_retry(
    attempt_fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    stats: CallStats,
    on_retry: RetryHook | None = None,
) -> T:
    """The asyncio twin of `call_with_retry` (sleeps with asyncio.sleep)."""
    stats.add(calls=1)
    attempt = 1
    while True:
        stats.add(attempts=1)
        try:
            return await attempt_fn()
        except TeacherServiceError as error:
            delay = _next_delay(error, attempt, policy, stats, on_retry)
        await asyncio.sleep(delay)
        attempt += 1


def _next_delay(
    error: TeacherServiceError,
    attempt: int,
    policy: RetryPolicy,
    stats: CallStats,
    on_retry: RetryHook | None,
) -> float:
    """The delay before the next attempt; re-raises `error` (with its attempt count) when we stop."""
    if not policy.should_retry(error, attempt):
        # Set only when giving up: the error's message says "gave up after N attempts", which would be
        # wrong in an on_retry hook that prints an error still being retried.
        error.attempts = attempt
        stats.add(failures=1)
        raise error
    delay = policy.delay(attempt, error.retry_after)
    stats.add(retries=1, backoff_seconds=delay)
    if on_retry is not None:
        on_retry(attempt, error, delay)
    return delay
