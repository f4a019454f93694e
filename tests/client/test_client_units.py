"""TeacherClient pieces that need no teacher: URL forms, retry policy, error mapping, and timeouts /
retries against real loopback sockets (a port nobody listens on, a socket that accepts and never answers,
a gateway that answers 503 + Retry-After once)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dualdistill.client import (
    NO_RETRIES,
    AsyncTeacherClient,
    RetryPolicy,
    TeacherClient,
    TeacherServiceError,
)
from dualdistill.client import operations as ops
from dualdistill.client.endpoint import parse_endpoint
from dualdistill.client.errors import from_http_response, parse_retry_after
from dualdistill.protocol.params import LogitsParams

FAST = dict(initial_backoff=0.01, max_backoff=0.02)


# ---- URL forms ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "transport", "expected"),
    [
        ("localhost:50051", None, ("grpc", "localhost:50051", False)),
        ("grpc://10.0.0.1:50051", None, ("grpc", "10.0.0.1:50051", False)),
        ("grpcs://teacher.example:443", None, ("grpc", "teacher.example:443", True)),
        ("http://localhost:8000/", None, ("http", "http://localhost:8000", False)),
        ("https://teacher.example", None, ("http", "https://teacher.example", True)),
        ("localhost:8000", "http", ("http", "http://localhost:8000", False)),
        ("http://localhost:8000", "http", ("http", "http://localhost:8000", False)),
    ],
)
def test_endpoint_forms(url, transport, expected):
    endpoint = parse_endpoint(url, transport)
    assert (endpoint.transport, endpoint.address, endpoint.secure) == expected


@pytest.mark.parametrize(
    ("url", "transport"), [("http://h:1", "grpc"), ("grpc://h:1", "http"), ("ftp://h:1", None)]
)
def test_endpoint_contradictions_refused(url, transport):
    with pytest.raises(ValueError, match="transport|scheme"):
        parse_endpoint(url, transport)


def test_constructor_checks():
    with pytest.raises(ValueError, match="timeout"):
        TeacherClient("localhost:1", timeout=0)
    with pytest.raises(ValueError, match="format"):
        TeacherClient("localhost:1", format="xml")
    with pytest.raises(ValueError, match="transport"):
        TeacherClient("localhost:1", transport="udp")


# ---- request building -----------------------------------------------------------------------------------


def test_logits_request_same_on_both_transports():
    import numpy as np

    op = ops.logits(
        "m",
        [np.array([5, 6, 7]), [8, 9]],
        [1, 1],
        LogitsParams(top_k=3, temperature=0.5, mode="topk", samples=4, seed=2**40),
        format="binary",
        deadline_seconds=2.0,
    )
    message = op.to_proto()
    assert [list(s.token_ids) for s in message.sequences] == [s["token_ids"] for s in op.body["sequences"]]
    assert message.seed == op.body["seed"] == 2**40 and message.top_k == 3 and message.format == "binary"
    assert message.request_id == op.body["request_id"] and message.deadline_seconds == 2.0
    json.dumps(op.body)  # plain JSON types only (numpy ints converted)
    with pytest.raises(ValueError, match="one start per sequence"):
        ops.logits(
            "m",
            [[1, 2]],
            [],
            LogitsParams(top_k=1, samples=1),
            format="json",
            deadline_seconds=None,
        )


def test_prompt_forms():
    assert ops.prompt_body("hi") == {"text": "hi"}
    assert ops.prompt_body([1, 2]) == {"token_ids": [1, 2]}
    chat = [{"role": "user", "content": "hi"}]
    assert ops.prompt_body(chat) == {"messages": chat}
    with pytest.raises(TypeError, match="prompt must be"):
        ops.prompt_body([1.5])
    with pytest.raises(TypeError, match="list of prompts"):
        ops.generate("m", "hi", max_new_tokens=1, temperature=1, top_p=1, n=1, seed=0)
    op = ops.generate("m", ["a", [3, 4], chat], max_new_tokens=2, temperature=0, top_p=1, n=1, seed=0)
    message = op.to_proto()
    assert message.prompts[0].text == "a" and list(message.prompts[1].token_ids) == [3, 4]
    assert message.prompts[2].messages[0].content == "hi"


# ---- retry policy and error mapping ----------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_capped_exponential_ceiling():
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, multiplier=2.0)
    rng = random.Random(0)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        draws = [policy.delay(retry, rng=rng) for _ in range(2000)]
        assert 0 <= min(draws) and max(draws) <= ceiling
        assert abs(sum(draws) / len(draws) - ceiling / 2) < 0.05 * ceiling  # uniform: mean = ceiling / 2


def test_retry_after_is_a_floor_and_capped():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.1, max_retry_after=5.0)
    assert all(policy.delay(1, retry_after=2.0) == 2.0 for _ in range(50))
    assert policy.delay(1, retry_after=3600.0) == 5.0
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


@pytest.mark.parametrize(
    ("status", "body", "code", "retried"),
    [
        (
            422,
            {"error": {"code": "INVALID_ARGUMENT", "message": "bad start", "field": "sequences[0].start"}},
            "INVALID_ARGUMENT",
            False,
        ),
        (404, {"error": {"code": "NOT_FOUND", "message": "no model", "field": "model"}}, "NOT_FOUND", False),
        (
            401,
            {"error": {"code": "UNAUTHENTICATED", "message": "key", "field": None}},
            "UNAUTHENTICATED",
            False,
        ),
        (
            413,
            {"error": {"code": "RESOURCE_EXHAUSTED", "message": "too big", "field": None}},
            "RESOURCE_EXHAUSTED",
            False,
        ),
        (500, {"error": {"code": "INTERNAL", "message": "oops", "field": None}}, "INTERNAL", False),
        (
            429,
            {"error": {"code": "RESOURCE_EXHAUSTED", "message": "queue full", "field": None}},
            "RESOURCE_EXHAUSTED",
            True,
        ),
        (503, {"error": {"code": "UNAVAILABLE", "message": "draining", "field": None}}, "UNAVAILABLE", True),
        (502, "<html>bad gateway</html>", "UNAVAILABLE", True),
        (504, "", "DEADLINE_EXCEEDED", True),
    ],
)
def test_http_errors_mapped_and_classified(status, body, code, retried):
    content = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
    error = from_http_response(status, {"retry-after": "1"}, content)
    assert (error.code, error.status, error.retry_after) == (code, status, 1.0)
    if isinstance(body, dict):
        assert error.message == body["error"]["message"] and error.field == body["error"]["field"]
    assert RetryPolicy().should_retry(error, attempt=1) is retried
    assert not RetryPolicy(max_attempts=1).should_retry(error, attempt=1)


# ---- real sockets: refused, silent, a gateway answering 503 ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_socket():
    """A loopback socket that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_refused_connection_is_retried_then_raised(transport):
    port = free_port()
    url = f"http://127.0.0.1:{port}" if transport == "http" else f"127.0.0.1:{port}"
    seen = []
    client = TeacherClient(
        url,
        timeout=2.0,
        retries=RetryPolicy(max_attempts=4, **FAST),
        on_retry=lambda n, err, delay: seen.append((n, err.code)),
    )
    with client, pytest.raises(TeacherServiceError) as info:
        client.models()
    assert info.value.code == "UNAVAILABLE" and info.value.attempts == 4
    assert seen == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE"), (3, "UNAVAILABLE")]
    assert (client.stats.calls, client.stats.attempts, client.stats.retries, client.stats.failures) == (
        1,
        4,
        3,
        1,
    )


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_timeout_fires_on_a_socket_that_never_answers(transport, silent_socket):
    url = f"http://127.0.0.1:{silent_socket}" if transport == "http" else f"127.0.0.1:{silent_socket}"
    with TeacherClient(url, timeout=0.3, retries=NO_RETRIES) as client:
        began = time.monotonic()
        with pytest.raises(TeacherServiceError) as info:
            client.logits("m", [[1, 2, 3]], [1])
        elapsed = time.monotonic() - began
    assert info.value.code == "DEADLINE_EXCEEDED" and info.value.effective_status == 504
    assert 0.25 <= elapsed < 3.0, elapsed


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_timeouts_are_retried_unless_504_is_dropped_from_the_policy(transport, silent_socket):
    url = f"http://127.0.0.1:{silent_socket}" if transport == "http" else f"127.0.0.1:{silent_socket}"
    with TeacherClient(url, timeout=0.1, retries=RetryPolicy(max_attempts=3, **FAST)) as client:
        with pytest.raises(TeacherServiceError, match="DEADLINE_EXCEEDED"):
            client.models()
        assert client.stats.attempts == 3
    no_timeouts = RetryPolicy(max_attempts=3, retry_statuses=frozenset({429, 502, 503}), **FAST)
    with TeacherClient(url, timeout=0.1, retries=no_timeouts) as client:
        with pytest.raises(TeacherServiceError, match="DEADLINE_EXCEEDED"):
            client.models()
        assert client.stats.attempts == 1


def test_async_timeout_fires(silent_socket):
    async def main():
        for url in (f"http://127.0.0.1:{silent_socket}", f"127.0.0.1:{silent_socket}"):
            async with AsyncTeacherClient(url, timeout=0.2, retries=NO_RETRIES) as client:
                with pytest.raises(TeacherServiceError, match="DEADLINE_EXCEEDED"):
                    await client.models()

    asyncio.run(main())


class _RollingGateway(BaseHTTPRequestHandler):
    """Stands in for a load balancer during a rollout: 503 + Retry-After first, then the backend's answer."""

    answers: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retry_after_is_honoured_over_http():
    models = {
        "models": [
            {
                "name": "m",
                "vocab_size": 10,
                "tokenizer_sha256": "ab",
                "max_seq_len": 8,
                "max_top_k": 5,
                "eos_token_id": 2,
                "bos_token_id": None,
                "dtype": "float32",
                "fingerprint": "f",
            }
        ]
    }
    unavailable = {"error": {"code": "UNAVAILABLE", "message": "draining", "field": None}}
    _RollingGateway.answers = [
        (503, {"retry-after": "0.4", "content-type": "application/json"}, json.dumps(unavailable).encode()),
        (200, {"content-type": "application/json"}, json.dumps(models).encode()),
    ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RollingGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        delays = []
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with TeacherClient(
            url, retries=RetryPolicy(**FAST), on_retry=lambda n, e, d: delays.append(d)
        ) as client:
            began = time.monotonic()
            (info,) = client.models()
            elapsed = time.monotonic() - began
    finally:
        server.shutdown()
        thread.join()
    assert info.name == "m" and info.bos_token_id is None and info.eos_token_id == 2
    assert delays == [0.4] and elapsed >= 0.4


class _ForwardProxy(BaseHTTPRequestHandler):
    """An HTTP forward proxy that answers the proxied request itself: it records the absolute-form target
    a client sends to a proxy ("GET http://host:port/path HTTP/1.1") and answers with `body`."""

    targets: list = []
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.targets.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_http_requests_go_through_the_environment_proxy(monkeypatch):
    """The HTTP transport sends each attempt to the connection pool httpx picks for the server's URL, so
    HTTP_PROXY applies as it does to any httpx client (the host below does not resolve: only the proxy
    can answer)."""
    _ForwardProxy.targets = []
    _ForwardProxy.body = json.dumps({"models": []}).encode()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")

    async def async_models():
        async with AsyncTeacherClient("http://teacher.invalid:8000", retries=NO_RETRIES) as client:
            return await client.models()

    try:
        with TeacherClient("http://teacher.invalid:8000", retries=NO_RETRIES) as client:
            assert client.models() == []
        assert asyncio.run(async_models()) == []
    finally:
        proxy.shutdown()
        thread.join()
    assert _ForwardProxy.targets == ["http://teacher.invalid:8000/v1/models"] * 2
