"""API keys and per-tenant limits as plain objects (no server): parsing, matching, the token bucket's
arithmetic against a hand-computed schedule, and concurrency slots."""

from __future__ import annotations

import pytest

from dualdistill_server.core.api_keys import ANONYMOUS, ApiKeys
from dualdistill_server.core.limits import TenantLimits, TokenBucket
from dualdistill_server.errors import ResourceExhausted, Unauthenticated
from dualdistill_server.metrics import Metrics

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keys_from_file_and_env_map_to_tenants(tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# students\n\nstudent-a:{KEY_A}\n  student-a:{KEY_A}  \n")
    keys = ApiKeys.from_settings(str(key_file), f"student-b:{KEY_B}, ")
    assert keys.enabled and keys.tenants == ["student-a", "student-b"]
    assert keys.tenant_for(f"Bearer {KEY_A}") == "student-a"
    assert keys.tenant_for(f"bearer   {KEY_B}") == "student-b"
    for bad in (None, "", KEY_A, f"Basic {KEY_A}", "Bearer ", f"Bearer {KEY_A}x"):
        with pytest.raises(Unauthenticated) as raised:
            keys.tenant_for(bad)
        assert KEY_A not in raised.value.message
    assert ApiKeys([]).tenant_for(None) == ANONYMOUS  # keys off: everyone is the anonymous tenant


def test_key_errors_never_quote_the_key(tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"ok:{KEY_A}\nno-colon-{KEY_B}\n")
    with pytest.raises(ValueError) as raised:
        ApiKeys.from_settings(str(key_file), None)
    assert "entry 2" in str(raised.value) and KEY_B not in str(raised.value)
    with pytest.raises(ValueError, match="two tenants") as shared:
        ApiKeys.from_settings(None, f"a:{KEY_A},b:{KEY_A}")
    assert KEY_A not in str(shared.value)
    with pytest.raises(ValueError, match="tenant names"):
        ApiKeys.from_settings(None, f"bad tenant:{KEY_A}")
    with pytest.raises(ValueError, match="none is given"):
        ApiKeys.from_settings(None, " , ")
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeys.from_settings(str(tmp_path / "missing"), None)


def test_token_bucket_schedule() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, clock=clock)  # capacity 10
    assert bucket.take(4) == 0 and bucket.level == 6
    assert bucket.take(25) == pytest.approx(0.4)  # needs min(25, 10) = 10 > 6: 4 tokens at 10/s
    assert bucket.level == 6  # a refusal takes nothing
    clock.now += 0.4
    assert bucket.take(25) == 0 and bucket.level == pytest.approx(-15)  # admitted into debt
    assert bucket.take(1) == pytest.approx(1.6)  # (1 - (-15)) / 10
    clock.now += 100
    assert bucket.level == pytest.approx(-15) and bucket.take(0) == 0 and bucket.level == 10  # refill caps at C


def test_tenant_limits_rate_is_per_tenant_with_retry_after() -> None:
    clock = Clock()
    limits = TenantLimits(tokens_per_second=100.0, max_concurrency=None, metrics=Metrics(), clock=clock)
    limits.charge("a", 250)  # the first request may exceed the bucket
    with pytest.raises(ResourceExhausted) as raised:
        limits.charge("a", 10)
    assert raised.value.retry_after_seconds == 2  # ceil((10 + 150) / 100)
    assert "tokens/s" in raised.value.message
    limits.charge("b", 100)  # another tenant has its own bucket
    clock.now += 1.6
    limits.charge("a", 10)


def test_tenant_limits_concurrency_slots_are_released_on_errors() -> None:
    limits = TenantLimits(tokens_per_second=None, max_concurrency=2, metrics=Metrics())
    with limits.slot("a"), limits.slot("a"):
        with pytest.raises(ResourceExhausted, match="max_concurrency=2"):
            with limits.slot("a"):
                pass
        with limits.slot("b"):
            assert limits.in_flight("a") == 2 and limits.in_flight("b") == 1
    with pytest.raises(RuntimeError):
        with limits.slot("a"):
            raise RuntimeError("the request failed")
    assert limits.in_flight("a") == 0
