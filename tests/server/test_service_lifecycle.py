"""Readiness, health, overload, internal errors and the SIGTERM drain.

The state tests run both transports in this process (the ASGI app through httpx, gRPC on a loopback
port) so they can move the service through loading -> ready -> draining; the drain test signals a real
server process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from dualdistill_server.config import ServerConfig
from dualdistill_server.core import TeacherService
from dualdistill_server.grpc import GrpcTransport
from dualdistill_server.http import create_app
from tests.fixtures.server_process import start_server
from tests.server.helpers import metric_sum

BODY = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FailingModel:
    """The real model, except that its forward raises an error whose text must never reach a client."""

    def __init__(self, model) -> None:
        self.info = model.info

    def compute_logits(self, tasks):
        raise RuntimeError("secret-internal-detail")


async def _health(target: str) -> list[int]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [(await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
                for name in ("", "dualdistill.v1.Teacher")]


async def _both_transports(service: TeacherService, config: ServerConfig):
    transport = GrpcTransport(service, config)
    port = await transport.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service, config)), base_url="http://t")
    return transport, f"127.0.0.1:{port}", client


def test_readiness_follows_loading_and_draining(tiny_model) -> None:
    config = ServerConfig(host="127.0.0.1", grpc_port=0)

    async def main():
        service = TeacherService({}, config)
        transport, target, client = await _both_transports(service, config)
        loading = await client.get("/readyz")
        refused = await client.post("/v1/logits", json=BODY)
        health_loading = await _health(target)
        service.add_model("tiny", tiny_model)
        service.mark_loaded()
        await asyncio.sleep(0.05)  # health updates are scheduled on the loop
        ready = await client.get("/readyz")
        served = await client.post("/v1/logits", json=BODY)
        health_ready = await _health(target)
        service.start_draining()
        await asyncio.sleep(0.05)
        draining = await client.get("/readyz")
        refused_draining = await client.post("/v1/logits", json=BODY)
        health_draining = await _health(target)
        await client.aclose()
        await transport.stop(0)
        await service.close()
        return (loading, refused, health_loading, ready, served, health_ready, draining, refused_draining,
                health_draining)

    (loading, refused, health_loading, ready, served, health_ready, draining, refused_draining,
     health_draining) = asyncio.run(main())
    assert loading.status_code == 503 and loading.json() == {"status": "loading"}
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "UNAVAILABLE"
    assert health_loading == [NOT_SERVING, NOT_SERVING]
    assert ready.status_code == 200 and served.status_code == 200
    assert health_ready == [SERVING, SERVING]
    assert draining.status_code == 503 and draining.json() == {"status": "draining"}
    assert refused_draining.status_code == 503
    assert health_draining == [NOT_SERVING, NOT_SERVING]


def test_full_queue_gives_429_with_retry_after(tiny_model) -> None:
    config = ServerConfig(max_wait_ms=400, max_queue_tokens=10)

    async def main():
        service = TeacherService({"tiny": tiny_model}, config)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service, config)),
                                     base_url="http://t") as client:
            first = asyncio.ensure_future(client.post("/v1/logits", json=BODY))  # 4 tokens wait 400 ms
            await asyncio.sleep(0.1)
            other = {"model": "tiny", "sequences": [{"token_ids": [9, 8, 7, 6, 5, 4, 3], "start": 1}]}
            second = await client.post("/v1/logits", json=other)  # 4 + 7 > 10
            first = await first
        await service.close()
        return first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_internal_errors_leak_nothing_on_either_transport(tiny_model, caplog) -> None:
    config = ServerConfig(host="127.0.0.1", grpc_port=0)

    async def main():
        service = TeacherService({"tiny": FailingModel(tiny_model)}, config)
        transport, target, client = await _both_transports(service, config)
        http = await client.post("/v1/logits", json=BODY, headers={"x-request-id": "boom-1"})
        async with grpc.aio.insecure_channel(target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            request = pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[1, 2, 3], start=1)])
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetLogits(request, metadata=(("x-request-id", "boom-2"),), timeout=10)
        await client.aclose()
        await transport.stop(0)
        await service.close()
        return http, raised.value

    http, rpc_error = asyncio.run(main())
    assert http.status_code == 500
    error = http.json()["error"]
    assert error["code"] == "INTERNAL" and "boom-1" in error["message"] and "secret" not in http.text
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    assert "boom-2" in rpc_error.details() and "secret" not in rpc_error.details()
    assert "secret-internal-detail" in caplog.text  # ... but the server log has it


def _metric_value(server, name: str) -> float:
    return metric_sum(httpx.get(server.http_url + "/metrics", timeout=10).text, name)


@pytest.fixture(scope="module")
def slow_window_server(tiny_model_dir):
    """A server whose 2 s batching window keeps requests queued long enough to act on them."""
    with start_server({"tiny": tiny_model_dir}, "--max-wait-ms", "2000", "--drain-seconds", "20") as server:
        yield server


def test_client_disconnect_drops_its_queued_sequences(slow_window_server) -> None:
    server = slow_window_server
    forwards_before = _metric_value(server, "dualdistill_batch_sequences_count")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.http_url + "/v1/logits", json=BODY, timeout=httpx.Timeout(10, read=0.3))
    deadline = time.monotonic() + 5
    while _metric_value(server, "dualdistill_queue_tokens") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _metric_value(server, "dualdistill_queue_tokens") == 0
    time.sleep(2.2)  # past the batching window: the dropped sequence must not run
    assert _metric_value(server, "dualdistill_batch_sequences_count") == forwards_before


def test_sigterm_finishes_in_flight_requests_and_exits_0(slow_window_server) -> None:
    server = slow_window_server
    outcomes: dict[str, object] = {}

    def http_request() -> None:
        outcomes["http"] = httpx.post(server.http_url + "/v1/logits", json=BODY, timeout=60)

    def grpc_request() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[4, 3, 2, 1], start=2)])
            outcomes["grpc"] = teacher_pb2_grpc.TeacherStub(channel).GetLogits(request, timeout=60)

    threads = [threading.Thread(target=http_request), threading.Thread(target=grpc_request)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while _metric_value(server, "dualdistill_queue_tokens") < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _metric_value(server, "dualdistill_queue_tokens") == 8, server.log_tail()
    server.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    readyz = httpx.get(server.http_url + "/readyz", timeout=5)
    late = httpx.post(server.http_url + "/v1/logits", json=BODY, timeout=5)
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    for thread in threads:
        thread.join(timeout=30)
    exit_code = server.wait(timeout=30)

    assert readyz.status_code == 503 and readyz.json() == {"status": "draining"}
    assert late.status_code == 503 and late.json()["error"]["code"] == "UNAVAILABLE"
    assert health.status == NOT_SERVING
    assert outcomes["http"].status_code == 200, outcomes["http"].text
    assert len(json.loads(outcomes["http"].text)["results"][0]["top_ids"]) == 3
    assert len(outcomes["grpc"].results[0].row_lengths) == 2
    assert exit_code == 0
    assert "draining 2 request(s) in flight" in server.log_tail(100)


def test_the_wire_codec_kernels_warm_up_before_the_startup_objects_freeze(tiny_server) -> None:
    """The server compiles (or loads from numba's cache) the wire codec's kernels beside the model
    loading and says so in its log; then, right before it becomes ready, it freezes the startup objects
    (gc.freeze): the kernels' objects are among them, so the warm-up finished before readiness."""
    pytest.importorskip("numba")
    lines = [json.loads(line) for line in tiny_server.log_path.read_text().splitlines() if line.startswith("{")]
    messages = [line.get("msg", "") for line in lines]
    warmed = [i for i, msg in enumerate(messages) if msg.startswith("wire codec kernels ready in")]
    frozen = [i for i, msg in enumerate(messages) if msg.startswith("froze ")]
    assert warmed and frozen, tiny_server.log_tail()
    assert warmed[0] < frozen[0], tiny_server.log_tail()
    assert lines[warmed[0]]["seconds"] > 0
    assert lines[frozen[0]]["objects"] > 10_000  # torch, transformers and the model at least
