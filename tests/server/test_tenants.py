"""API keys, per-tenant limits, deadlines and the drain, against a real `dualdistill serve` process.

The server here batches slowly on purpose: a request smaller than 64 tokens waits the 1.5 s batching
window, so it is reliably "in flight" while the test acts; a 64-token request fills a batch and runs at
once. Each test uses its own tenant, so token buckets and slots do not leak between tests. Limits:
100 tokens/s (bucket of 100) and 1 request in flight per tenant.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from tests.fixtures.server_process import start_server
from tests.server.helpers import metric_sum
from tests.server.redis_process import free_port

TENANTS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hal")
KEYS = {tenant: f"sk-{tenant}-{i}9f3c2a71d04e8b6" for i, tenant in enumerate(TENANTS)}
WRONG_KEY = "sk-not-a-key-5e1d77aa0c93f2"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
WINDOW_S = 1.5


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text("# tenant:key\n\n" + "".join(f"{t}:{k}\n" for t, k in KEYS.items()))
    metrics_port = free_port()
    with start_server(
        {"tiny": tiny_model_dir},
        "--api-key-file", str(key_file),
        "--tenant-tokens-per-second", "100",
        "--tenant-max-concurrency", "1",
        "--max-wait-ms", str(int(WINDOW_S * 1000)),
        "--max-batch-tokens", "64",
        "--max-seq-len", "256",
        "--cache", "none",
        "--metrics-port", str(metrics_port),
        "--drain-seconds", "20",
        "--log-level", "info",
    ) as running:
        running.metrics_port = metrics_port
        yield running


def _body(lengths: list[int], seed: int, **fields) -> dict:
    rng = np.random.default_rng(seed)
    sequences = [{"token_ids": rng.integers(0, 320, n).tolist(), "start": 1} for n in lengths]
    return {"model": "tiny", "sequences": sequences, **fields}


def _headers(key: str | None, **extra: str) -> dict:
    return {**({"authorization": f"Bearer {key}"} if key else {}), **extra}


def _post(server, body: dict, key: str | None, path: str = "/v1/logits", **kwargs) -> httpx.Response:
    headers = _headers(key, **kwargs.pop("headers", {}))
    return httpx.post(server.http_url + path, json=body, headers=headers, timeout=kwargs.pop("timeout", 30),
                      **kwargs)


def _metadata(key: str | None) -> tuple:
    return (("authorization", f"Bearer {key}"),) if key else ()


def _grpc_request(body: dict) -> pb.LogitsRequest:
    return pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(**s) for s in body["sequences"]])


def _metrics(server) -> str:
    return httpx.get(server.http_url + "/metrics", timeout=10).text


def _wait_for_queue(server, at_least: float) -> None:
    deadline = time.monotonic() + 10
    while metric_sum(_metrics(server), "dualdistill_queue_tokens") < at_least:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.02)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_http_data_routes_need_a_valid_key_and_probes_stay_open(server) -> None:
    body = _body([64], seed=1)  # a full batch: runs at once
    missing, wrong, good = (_post(server, body, key) for key in (None, WRONG_KEY, KEYS["alice"]))
    for refused in (missing, wrong):
        assert _error(refused, 401)["code"] == "UNAUTHENTICATED"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 200, good.text
    assert _error(_post(server, {"model": "tiny", "prompts": [{"text": "hi"}]}, None, "/v1/generate"), 401)
    assert httpx.get(server.http_url + "/v1/models", timeout=10).status_code == 401
    models = httpx.get(server.http_url + "/v1/models", headers=_headers(KEYS["alice"]), timeout=10)
    assert [m["name"] for m in models.json()["models"]] == ["tiny"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(server.http_url + path, timeout=10).status_code == 200, path
    separate = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    assert metric_sum(separate, "dualdistill_requests_total", tenant="alice", code="OK") >= 2
    assert metric_sum(separate, "dualdistill_requests_total", route="/v1/logits", tenant="",
                      code="UNAUTHENTICATED") == 2


def test_grpc_teacher_methods_need_a_valid_key_and_health_stays_open(server) -> None:
    body = _body([64], seed=2)
    calls = {
        "ListModels": lambda stub, md: stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=10),
        "GetLogits": lambda stub, md: stub.GetLogits(_grpc_request(body), metadata=md, timeout=10),
        "Generate": lambda stub, md: stub.Generate(
            pb.GenerateRequest(model="tiny", prompts=[pb.Prompt(text="hi")]), metadata=md, timeout=10),
        "StreamLogits": lambda stub, md: list(
            stub.StreamLogits(iter([_grpc_request(body)]), metadata=md, timeout=10)),
    }
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        for name, call in calls.items():
            for key in (None, WRONG_KEY):
                with pytest.raises(grpc.RpcError) as raised:
                    call(stub, _metadata(key))
                assert raised.value.code() == UNAUTHENTICATED, name
                assert WRONG_KEY not in raised.value.details()
        assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), metadata=_metadata(KEYS["hal"])).models]
        assert len(calls["GetLogits"](stub, _metadata(KEYS["hal"])).results) == 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        assert "dualdistill.v1.Teacher" in {s.name for s in answer.list_services_response.service}


def test_logs_name_tenants_but_never_keys(server) -> None:
    _post(server, _body([64], seed=3), WRONG_KEY)
    text = server.log_path.read_text()
    assert '"tenant": "alice"' in text
    for key in (*KEYS.values(), WRONG_KEY):
        assert key not in text


def test_concurrency_cap_is_per_tenant(server) -> None:
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, server, _body([6], seed=10), KEYS["bob"])  # waits the batching window
        _wait_for_queue(server, 6)
        second = _post(server, _body([6], seed=11), KEYS["bob"])
        with grpc.insecure_channel(server.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                teacher_pb2_grpc.TeacherStub(channel).GetLogits(
                    _grpc_request(_body([6], seed=12)), metadata=_metadata(KEYS["bob"]), timeout=10)
        other = pool.submit(_post, server, _body([6], seed=13), KEYS["carol"])  # a tenant of its own
        assert first.result().status_code == 200 and other.result().status_code == 200
    error = _error(second, 429)
    assert error["code"] == "RESOURCE_EXHAUSTED" and "max_concurrency=1" in error["message"]
    assert second.headers["retry-after"] == "1"
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(raised.value.trailing_metadata())["retry-after"] == "1"
    assert _post(server, _body([64], seed=14), KEYS["bob"]).status_code == 200  # the slot is back
    rejections = metric_sum(_metrics(server), "dualdistill_tenant_rejections_total", tenant="bob")
    assert rejections == 2


def _until_not_429(send) -> httpx.Response | object:
    """The server frees a slot when it notices the client left; poll until it has (429 costs no tokens)."""
    deadline = time.monotonic() + 10
    while True:
        outcome = send()
        if getattr(outcome, "status_code", None) != 429 or time.monotonic() > deadline:
            return outcome
        time.sleep(0.05)


def test_disconnect_and_cancel_free_the_tenants_slot(server) -> None:
    with pytest.raises(httpx.ReadTimeout):
        _post(server, _body([6], seed=20), KEYS["dave"], timeout=httpx.Timeout(10, read=0.3))
    after = _until_not_429(lambda: _post(server, _body([64], seed=21), KEYS["dave"]))
    assert after.status_code == 200, after.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetLogits(_grpc_request(_body([6], seed=22)), metadata=_metadata(KEYS["erin"]), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while True:
            try:
                response = stub.GetLogits(_grpc_request(_body([64], seed=23)), metadata=_metadata(KEYS["erin"]),
                                          timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.05)
    assert len(response.results) == 1


def test_token_rate_limit_gives_429_with_retry_after(server) -> None:
    # 192 tokens > the bucket of 100: admitted, leaving a debt of 92 (full batches: no batching wait).
    big = _post(server, _body([64, 64, 64], seed=30), KEYS["frank"])
    assert big.status_code == 200, big.text
    refused = _post(server, _body([10], seed=31), KEYS["frank"])
    error = _error(refused, 429)
    assert "100 tokens/s" in error["message"] and int(refused.headers["retry-after"]) >= 1
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            teacher_pb2_grpc.TeacherStub(channel).GetLogits(
                _grpc_request(_body([10], seed=32)), metadata=_metadata(KEYS["frank"]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _post(server, _body([64], seed=33), KEYS["alice"]).status_code == 200  # other tenants unaffected
    time.sleep(int(refused.headers["retry-after"]))
    later = _until_not_429(lambda: _post(server, _body([64], seed=34), KEYS["frank"]))  # the debt is paid off
    assert later.status_code == 200, later.text


def test_deadlines_give_504_and_drop_the_queued_work(server) -> None:
    forwards_before = metric_sum(_metrics(server), "dualdistill_batch_sequences_count")
    begin = time.monotonic()
    by_field = _post(server, _body([6], seed=40, deadline_seconds=0.3), KEYS["gina"])
    by_header = _post(server, _body([6], seed=41), KEYS["gina"], headers={"x-deadline-seconds": "0.3"})
    elapsed = time.monotonic() - begin
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            teacher_pb2_grpc.TeacherStub(channel).GetLogits(
                _grpc_request(_body([6], seed=42)), metadata=_metadata(KEYS["gina"]), timeout=0.3)
    bad = _post(server, _body([6], seed=43), KEYS["gina"], headers={"x-deadline-seconds": "soon"})
    for response in (by_field, by_header):
        assert _error(response, 504)["code"] == "DEADLINE_EXCEEDED"
    assert elapsed < 2 * WINDOW_S  # two requests, each answered at its 0.3 s deadline, not after the window
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _error(bad, 422)["field"] == "x-deadline-seconds"
    time.sleep(WINDOW_S + 0.3)  # past the window: dropped sequences must not have run
    text = _metrics(server)
    assert metric_sum(text, "dualdistill_queue_tokens") == 0
    assert metric_sum(text, "dualdistill_batch_sequences_count") == forwards_before


def test_sigterm_completes_in_flight_requests_of_several_tenants(server) -> None:
    # Last in this module: it stops the server.
    outcomes: dict[str, object] = {}

    def http_request() -> None:
        outcomes["http"] = _post(server, _body([6], seed=50), KEYS["alice"], timeout=60)

    def grpc_request() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            outcomes["grpc"] = teacher_pb2_grpc.TeacherStub(channel).GetLogits(
                _grpc_request(_body([5], seed=51)), metadata=_metadata(KEYS["carol"]), timeout=60)

    threads = [threading.Thread(target=http_request), threading.Thread(target=grpc_request)]
    for thread in threads:
        thread.start()
    _wait_for_queue(server, 11)
    server.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    readyz = httpx.get(server.http_url + "/readyz", timeout=5)
    late = _post(server, _body([64], seed=52), KEYS["hal"], timeout=5)
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    for thread in threads:
        thread.join(timeout=30)
    assert readyz.status_code == 503 and late.status_code == 503
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert outcomes["http"].status_code == 200 and len(outcomes["grpc"].results) == 1
    assert server.wait(timeout=30) == 0
