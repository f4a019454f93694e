"""Concurrent load on loopback (tests/reliability/loadgen.py): only 200 or an explicit 429 + Retry-After,
every 200 with the right number of rows; latency percentiles recorded (printed and written as JSON
under the test's tmp dir). The slow variant also bounds the server's memory growth (Triton's
L0_memory_growth): VmRSS after 10,000 answers is within 10 % of VmRSS after 1,000.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY_MODEL_NAME
from tests.fixtures.server_process import start_server
from tests.reliability.loadgen import LOAD_SERVER_ARGS, RSS_MARKS, LoadReport, _request, run_load

RSS_GROWTH_LIMIT = 0.10


def _assert_clean(report: LoadReport) -> None:
    assert set(report.statuses) <= {"200", "429"} and not report.unexpected, report.to_json()
    assert report.statuses.get("200", 0) > 0, report.to_json()


def test_the_mix_without_sampling_sends_top_k_requests_only() -> None:
    """`sampled=False` (for an engine without "sample" mode, bench/vllm_service.py): the same mix, its
    sampled share sent as top-k JSON."""
    def modes(sampled: bool) -> set:
        rng = np.random.default_rng(0)
        return {_request(rng, sampled)[0].get("mode", "topk") for _ in range(400)}

    assert modes(True) == {"topk", "sample"}
    assert modes(False) == {"topk"}


def test_sixteen_clients_for_five_seconds(tiny_server, tmp_path) -> None:
    report = run_load(tiny_server.http_url, clients=16, seconds=5.0)
    (tmp_path / "load-16x5s.json").write_text(report.to_json())
    print(report.to_json())
    _assert_clean(report)
    assert report.requests >= 32, report.to_json()  # at least two answers per client


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sixty_four_clients_for_a_minute_without_memory_growth(tiny_model_dir, tmp_path) -> None:
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *LOAD_SERVER_ARGS, wire_kernels="auto") as server:
        report = run_load(
            server.http_url, clients=64, seconds=60.0, min_requests=RSS_MARKS[-1], max_seconds=600.0,
            pid=server.process.pid,
        )  # fmt: skip
        alive = server.process.poll() is None
    (tmp_path / "load-64x60s.json").write_text(report.to_json())
    print(report.to_json())
    assert alive
    _assert_clean(report)
    assert report.seconds >= 60.0 and report.requests >= RSS_MARKS[-1], report.to_json()
    assert report.rss_growth is not None and report.rss_growth < RSS_GROWTH_LIMIT, report.to_json()
