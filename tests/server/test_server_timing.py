"""The `server-timing` of a request (context.py): its stages as the transports return them, and their sums."""

from __future__ import annotations

import grpc
import httpx
import pytest

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from dualdistill_server import context
from tests.server.helpers import random_sequences


def parse(value: str) -> dict[str, float]:
    """'a;dur=1.500, total;dur=3.000' -> {"a": 1.5, "total": 3.0} (ms), checking the syntax."""
    out = {}
    for part in value.split(", "):
        name, _, duration = part.partition(";dur=")
        assert name and duration and float(duration) >= 0, value
        assert name not in out, value
        out[name] = float(duration)
    return out


def test_stages_sum_and_format() -> None:
    ctx, token = context.open_request("timing-unit")
    try:
        context.record_timing("forward", 0.002)
        context.record_timing("forward", 0.001)  # a second batch of the same request
        context.record_timing("encode", 0.0005)
        timings = parse(context.server_timing(ctx))
    finally:
        context.close_request(token)
    assert list(timings) == ["forward", "encode", "total"]
    assert timings["forward"] == pytest.approx(3.0) and timings["encode"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown timing stage"):
        context.record_timing("lunch", 1.0)
    context.record_timing("forward", 1.0)  # outside a request: nothing to record, no error


def _post(server, body: dict, **headers: str) -> httpx.Response:
    response = httpx.post(server.http_url + "/v1/logits", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(("fmt", "seed"), [("binary", 51), ("json", 54)])
def test_http_logits_report_their_stages(tiny_server, fmt, seed) -> None:
    body = {"model": "tiny", "sequences": random_sequences(320, [40, 17], seed=seed), "top_k": 16, "format": fmt}
    timings = parse(_post(tiny_server, body).headers["server-timing"])
    assert {"parse", "queue", "forward", "encode", "total"} <= set(timings), timings
    # The stages follow one another (parse, then the cache, queue and forward, then encode) within total.
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] + 0.01, timings
    assert timings["forward"] > 0


def test_a_cached_sequence_reports_the_cache_and_no_forward(tiny_server) -> None:
    body = {"model": "tiny", "sequences": random_sequences(320, [30], seed=52), "top_k": 4}
    first = parse(_post(tiny_server, body).headers["server-timing"])
    again = parse(_post(tiny_server, body).headers["server-timing"])
    assert "forward" in first and "cache" in first, first  # the memory cache is on in the test server
    assert "cache" in again and "forward" not in again and "queue" not in again, again


def test_probes_have_no_server_timing(tiny_server) -> None:
    assert "server-timing" not in httpx.get(tiny_server.http_url + "/healthz", timeout=10).headers


def test_grpc_logits_report_their_stages_in_the_trailers(tiny_server) -> None:
    sequences = [pb.Sequence(**s) for s in random_sequences(320, [25], seed=53)]
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        _, call = stub.GetLogits.with_call(pb.LogitsRequest(model="tiny", sequences=sequences, format="binary"),
                                           timeout=60)  # fmt: skip
    trailers = dict(call.trailing_metadata())
    timings = parse(trailers["server-timing"])
    assert {"parse", "queue", "forward", "encode", "total"} <= set(timings), timings
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] + 0.01, timings
