"""Two `dualdistill serve` replicas sharing a real Redis as their result cache (`--cache redis://...`).

- what replica A computed, replica B serves from Redis: zero forward tokens on B, bit-identical rows;
- Redis killed: both replicas keep answering (computing), the failure is logged and counted.

Skipped only when the `redis-server` binary is missing (.ci/run installs it).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from dualdistill import TeacherClient
from tests.fixtures.server_process import start_server
from tests.server.helpers import assert_same_result, expected_results, metric_sum
from tests.server.redis_process import start_redis

SEQUENCES, LENGTH, START, TOP_K = 12, 40, 5, 12


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with start_redis(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def replicas(redis, tiny_model_dir):
    """Two servers on one Redis, started at the same time (each start is mostly imports)."""
    args = ("--cache", f"{redis.url}?ttl=600", "--max-wait-ms", "30", "--max-seq-len", "256")
    managers = [start_server({"tiny": tiny_model_dir}, *args) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(manager.__enter__) for manager in managers]
    started, failure = [], None
    for manager, future in zip(managers, futures, strict=True):
        try:
            started.append((manager, future.result()))
        except Exception as exc:  # noqa: BLE001 - stop the other one, then fail
            failure = exc
    try:
        if failure is not None:
            raise failure
        yield [server for _, server in started]
    finally:
        for manager, _ in started:
            manager.__exit__(None, None, None)


def _metric(server, name: str, **labels: str) -> float:
    return metric_sum(httpx.get(server.http_url + "/metrics", timeout=10).text, name, **labels)


def _logits(url: str, transport: str, data: np.ndarray) -> list:
    with TeacherClient(url, transport=transport, format="binary-lossless", timeout=60) as client:
        return client.logits("tiny", data.tolist(), [START] * len(data), top_k=TOP_K)


def _data(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 320, (SEQUENCES, LENGTH))


def test_second_replica_serves_the_firsts_results_from_redis(redis, replicas) -> None:
    first, second = replicas
    data = _data(1)
    computed = _logits(first.http_url, "http", data)
    deadline = time.monotonic() + 20
    while redis.client().dbsize() < SEQUENCES:  # the writes happen just after the response
        assert time.monotonic() < deadline, first.log_tail()
        time.sleep(0.02)
    before = _metric(second, "dualdistill_forward_tokens_total")
    served = _logits(second.grpc_target, "grpc", data)
    assert _metric(second, "dualdistill_forward_tokens_total") - before == 0
    assert _metric(second, "dualdistill_cache_hits_total", model="tiny") == SEQUENCES
    assert _metric(first, "dualdistill_forward_tokens_total") == SEQUENCES * LENGTH
    for got, want in zip(served, computed, strict=True):
        assert_same_result(got, want, atol=0)


def test_requests_are_computed_when_redis_dies(redis, replicas, tiny_model) -> None:
    redis.kill()
    for server, seed in zip(replicas, (2, 3), strict=True):
        data = _data(seed)
        before = _metric(server, "dualdistill_forward_tokens_total")
        results = _logits(server.http_url, "http", data)
        again = _logits(server.http_url, "http", data[:2])  # still answering while Redis stays down
        assert _metric(server, "dualdistill_forward_tokens_total") - before >= SEQUENCES * LENGTH
        assert _metric(server, "dualdistill_cache_errors_total", backend="redis") >= 1
        body = {"sequences": [{"token_ids": row.tolist(), "start": START} for row in data[:2]], "top_k": TOP_K}
        for got, want in zip(results[:2], expected_results(tiny_model, body), strict=True):
            assert_same_result(got, want)
        assert len(again) == 2
        assert "redis cache get failed" in server.log_tail(200), server.log_tail()
