"""Result-cache backends and `core.cache.ResultCache`, in process (Redis: a real redis-server).

The disk backend is also opened by three processes at once (the case `--cache disk:DIR` promises to be
safe for); values are plain bytes, so these tests need no model, except the ResultCache ones, which store
real results of the tiny model and check they come back bit-exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dualdistill.protocol.params import LogitsParams
from dualdistill_server.cache import open_backend, parse_cache_spec
from dualdistill_server.cache.backend import DEFAULT_REDIS_TTL_SECONDS
from dualdistill_server.cache.disk import DiskBackend
from dualdistill_server.cache.memory import MemoryBackend
from dualdistill_server.cache.redis_backend import KEY_PREFIX, RedisBackend
from dualdistill_server.core.cache import ResultCache, encode_result, sequence_key
from dualdistill_server.metrics import Metrics
from dualdistill_server.models import LogitsTask
from tests.fixtures.server_process import ROOT
from tests.server.helpers import metric_sum
from tests.server.redis_process import free_port, start_redis


def _key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def _run(coro):
    return asyncio.run(coro)


def test_cache_spec_forms() -> None:
    assert parse_cache_spec("memory").kind == "memory" and parse_cache_spec("none").kind == "none"
    assert parse_cache_spec("disk:/var/cache/dd").location == "/var/cache/dd"
    redis = parse_cache_spec("redis://cache:6380/2?ttl=60&socket_keepalive=true")
    assert (redis.kind, redis.ttl_seconds) == ("redis", 60)
    assert redis.location == "redis://cache:6380/2?socket_keepalive=true"  # our own parameter removed
    assert parse_cache_spec("redis://cache:6379/0").ttl_seconds == DEFAULT_REDIS_TTL_SECONDS
    for bad in ("memcached://x", "disk:", "redis://h:1/0?ttl=0", "redis://h:1/0?ttl=soon", ""):
        with pytest.raises(ValueError):
            parse_cache_spec(bad)
    assert open_backend("none", 10) is None


def test_memory_backend_is_an_lru_within_its_byte_budget() -> None:
    async def main():
        cache = MemoryBackend(max_bytes=100)
        await cache.put_many([(_key(0), b"a" * 40), (_key(1), b"b" * 40)])
        assert await cache.get_many([_key(0)]) == [b"a" * 40]  # 0 is now the most recently used
        await cache.put_many([(_key(2), b"c" * 40)])  # 120 > 100: the least recently used (1) goes
        got = await cache.get_many([_key(0), _key(1), _key(2)])
        await cache.put_many([(_key(3), b"d" * 101)])  # larger than the whole budget: not stored
        return got, cache.stored_bytes, await cache.get_many([_key(3)])

    got, stored, too_big = _run(main())
    assert got == [b"a" * 40, None, b"c" * 40] and stored == 80 and too_big == [None]


def test_disk_backend_survives_reopening_and_evicts_least_recently_used(tmp_path) -> None:
    async def fill():
        cache = DiskBackend(tmp_path, max_bytes=1000, touch_seconds=0)
        await cache.put_many([(_key(i), bytes([i]) * 100) for i in range(8)])  # 800 bytes
        await cache.get_many([_key(0)])  # touched: now the most recently used
        await cache.close()

    async def reopen():
        cache = DiskBackend(tmp_path, max_bytes=1000, touch_seconds=0)
        before = await cache.get_many([_key(i) for i in range(8)])
        await asyncio.sleep(0.01)
        await cache.get_many([_key(0)])
        await cache.put_many([(_key(i), bytes([i]) * 100) for i in range(8, 11)])  # 1100 > 1000: evict to 900
        after = await cache.get_many([_key(i) for i in range(11)])
        stored = cache.stored_bytes()
        await cache.close()
        return before, after, stored

    _run(fill())
    before, after, stored = _run(reopen())
    assert before == [bytes([i]) * 100 for i in range(8)]
    assert after[0] == bytes([0]) * 100  # recently read: kept
    assert after[1] is None and after[2] is None  # the two least recently used went
    assert all(after[i] == bytes([i]) * 100 for i in range(3, 11))
    assert stored == 900


_WRITER = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from dualdistill_server.cache.disk import DiskBackend

    directory, worker = sys.argv[1], int(sys.argv[2])
    key = lambda i: hashlib.sha256(str(i).encode()).digest()

    async def main():
        cache = DiskBackend(directory, max_bytes=10**9)
        for i in range(40):  # interleaved single writes and reads of everyone's keys
            n = worker * 1000 + i
            await cache.put_many([(key(n), n.to_bytes(4, "little") * 64)])
            await cache.get_many([key(w * 1000 + i) for w in range(3)])
        await cache.close()

    asyncio.run(main())
    """
)


def test_disk_backend_is_safe_for_several_processes_at_once(tmp_path) -> None:
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{ROOT / 'client'}"}
    workers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(w)], env=env, stderr=subprocess.PIPE)
        for w in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()

    async def read_all():
        cache = DiskBackend(tmp_path, max_bytes=10**9)
        values = await cache.get_many([_key(w * 1000 + i) for w in range(3) for i in range(40)])
        stored = cache.stored_bytes()
        await cache.close()
        return values, stored

    values, stored = _run(read_all())
    expected = [(w * 1000 + i).to_bytes(4, "little") * 64 for w in range(3) for i in range(40)]
    assert values == expected and stored == 120 * 256


def test_redis_backend_sets_a_ttl_and_round_trips(tmp_path) -> None:
    with start_redis(tmp_path) as redis:

        async def main():
            cache = open_backend(redis.url + "?ttl=120", 0)
            await cache.put_many([(_key(1), b"one"), (_key(2), b"two")])
            got = await cache.get_many([_key(2), _key(3), _key(1)])
            await cache.close()
            return got

        got = _run(main())
        ttl = redis.client().ttl(KEY_PREFIX + _key(1))
    assert got == [b"two", None, b"one"]
    assert 100 < ttl <= 120


# ---- ResultCache: real results, encoded losslessly ---------------------------------------------------------


def _tasks(n: int) -> list[LogitsTask]:
    rng = np.random.default_rng(5)
    return [
        LogitsTask(token_ids=rng.integers(0, 320, 12 + i), start=3,
                   params=LogitsParams(top_k=8, temperature=0.8, samples=1))
        for i in range(n)
    ]


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("row_lengths", "top_ids", "top_logprobs", "token_logprobs", "tail_logprobs"))


def test_result_cache_serves_stored_results_bit_exact(tiny_model, tmp_path) -> None:
    tasks = _tasks(3)
    results = tiny_model.compute_logits(tasks)
    keys = [sequence_key(tiny_model.info.fingerprint, task) for task in tasks]
    metrics = Metrics()

    async def main():
        cache = ResultCache(DiskBackend(tmp_path, max_bytes=10**7), metrics)
        cache.store(keys[0], results[0])
        waiting = await cache.lookup("tiny", keys[:1])  # before the write: from the waiting results
        cache.store(keys[1], results[1])
        assert await cache.flush(10)
        written = await cache.lookup("tiny", keys)
        await cache.close()
        reopened = ResultCache(DiskBackend(tmp_path, max_bytes=10**7), metrics)
        again = await reopened.lookup("tiny", keys[:2])
        await reopened.close()
        return waiting, written, again

    waiting, written, again = _run(main())
    assert waiting[0] is results[0]
    assert _same(written[0], results[0]) and _same(written[1], results[1]) and written[2] is None
    assert _same(again[0], results[0]) and _same(again[1], results[1])
    text = metrics.render().decode()
    assert metric_sum(text, "dualdistill_cache_hits_total", model="tiny") == 5
    assert metric_sum(text, "dualdistill_cache_misses_total", model="tiny") == 1


def test_result_cache_answers_misses_when_redis_is_down_and_backs_off(tiny_model) -> None:
    (task,) = _tasks(1)
    (result,) = tiny_model.compute_logits([task])
    key = sequence_key(tiny_model.info.fingerprint, task)
    metrics = Metrics()

    async def main():
        cache = ResultCache(RedisBackend(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60), metrics)
        first = await cache.lookup("tiny", [key])  # connection refused -> a miss, not an error
        second = await cache.lookup("tiny", [key])  # backing off: Redis is not asked again
        cache.store(key, result)
        assert await cache.flush(10)  # the write is skipped while backing off
        await cache.close()
        return first, second

    first, second = _run(main())
    assert first == [None] and second == [None]
    text = metrics.render().decode()
    assert metric_sum(text, "dualdistill_cache_errors_total", backend="redis", op="get") == 1
    assert metric_sum(text, "dualdistill_cache_misses_total", model="tiny") == 2


def test_a_damaged_entry_is_a_miss_and_is_repaired(tiny_model, tmp_path) -> None:
    (task,) = _tasks(1)
    (result,) = tiny_model.compute_logits([task])
    key = sequence_key(tiny_model.info.fingerprint, task)
    metrics = Metrics()

    async def main():
        backend = DiskBackend(tmp_path, max_bytes=10**7)
        await backend.put_many([(key, b"not a wire payload")])
        cache = ResultCache(backend, metrics)
        damaged = await cache.lookup("tiny", [key])
        cache.store(key, result)  # what the batcher does after computing the miss
        assert await cache.flush(10)  # written: the next lookup reads the disk
        repaired = await cache.lookup("tiny", [key])
        size = backend.stored_bytes()
        await cache.close()
        return damaged, repaired, size

    damaged, repaired, size = _run(main())
    assert damaged == [None] and _same(repaired[0], result)
    assert metric_sum(metrics.render().decode(), "dualdistill_cache_errors_total", op="decode") == 1
    assert size == len(encode_result(result))  # the size accounting follows the replacement
