"""client/plain_http.py and http11.py: the blocking HTTP transport's own connections, against real loopback
servers (http.server, raw sockets) that count their connections, close them in the ways real servers do
and frame their answers in every way HTTP/1.1 allows."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from dualdistill import TeacherClient
from dualdistill.client.errors import TeacherServiceError
from dualdistill.client.retry import RetryPolicy
from dualdistill.client.transport_http import HttpTransport

MODELS = json.dumps({"models": []}).encode()
NO_RETRIES = RetryPolicy(max_attempts=1)


class _Server(ThreadingHTTPServer):
    """Answers GET /v1/models on kept-alive HTTP/1.1 connections. `requests_per_connection`: after that many
    answers a connection is closed without notice (as an idle timeout does); `drop_next`: the next that many
    requests are read and their connection closed with no answer (a close that crosses a request)."""

    daemon_threads = True

    def __init__(self, requests_per_connection: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests_per_connection = requests_per_connection
        self.drop_next = 0
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.thread.join()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.answered = 0
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        with server.lock:
            server.requests += 1
            drop = server.drop_next > 0
            if drop:
                server.drop_next -= 1
        if drop:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(MODELS)))
        self.end_headers()
        self.wfile.write(MODELS)
        self.answered += 1
        limit = server.requests_per_connection
        self.close_connection = limit is not None and self.answered >= limit

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    servers: list[_Server] = []

    def start(**settings) -> _Server:
        servers.append(_Server(**settings))
        return servers[-1]

    yield start
    for one in servers:
        one.stop()


def test_calls_share_one_kept_alive_connection(server):
    s = server()
    with TeacherClient(s.url, retries=NO_RETRIES) as client:
        for _ in range(5):
            assert client.models() == []
    assert (s.requests, s.connections) == (5, 1)
    with pytest.raises(RuntimeError, match="closed"):  # as httpx's closed client: no new connection
        client.models()


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(server):
    s = server(requests_per_connection=1)
    with TeacherClient(s.url, retries=RetryPolicy(max_attempts=3)) as client:
        for _ in range(3):
            assert client.models() == []
        assert client.stats.retries == 0
    assert (s.requests, s.connections) == (3, 3)


def test_a_close_that_crosses_a_request_sends_it_again_on_a_new_connection(server):
    # The server reads the second request of a connection and closes it without answering: the reused
    # connection looked idle and open when it was taken, so the request goes once more, on a new one.
    s = server()
    with TeacherClient(s.url, retries=NO_RETRIES) as client:
        assert client.models() == []
        s.drop_next = 1
        assert client.models() == []
        assert client.stats.retries == 0
    assert (s.requests, s.connections) == (3, 2)


def test_a_new_connection_closed_without_an_answer_is_not_sent_again(server):
    # Only a reused connection can have been closed before the request: on a new one the close is the
    # server's answer, an UNAVAILABLE error (which the retry policy may retry, with its backoff).
    s = server()
    s.drop_next = 1
    with TeacherClient(s.url, retries=NO_RETRIES) as client, pytest.raises(TeacherServiceError) as info:
        client.models()
    assert info.value.code == "UNAVAILABLE" and "unreachable" in info.value.message
    assert (s.requests, s.connections) == (1, 1)


def test_threads_each_take_their_own_connection_and_give_it_back(server):
    s = server()
    with TeacherClient(s.url, retries=NO_RETRIES) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.models(), range(80)))
        idle = len(client._transport._plain._idle)
    assert answers == [[]] * 80 and s.requests == 80
    assert 1 <= s.connections <= 8 and idle == s.connections


def test_only_plain_http_without_a_proxy_takes_the_own_connections(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert HttpTransport("http://127.0.0.1:1", None)._plain is not None
    assert HttpTransport("http://127.0.0.1:1", None, plain_http=False)._plain is None
    assert HttpTransport("https://127.0.0.1:1", None)._plain is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:2")
    transport = HttpTransport("http://teacher.invalid:1", None)
    assert transport._plain is None and transport._pool is not transport._client._transport
    assert isinstance(transport._client, httpx.Client)


def test_a_base_url_path_prefixes_every_route(server):
    # a server behind a path prefix ("http://gateway/teacher"): the prefix is kept on the request target
    s = server()
    seen = []
    original = _Handler.do_GET

    def recording(handler) -> None:
        seen.append(handler.path)
        original(handler)

    _Handler.do_GET = recording
    try:
        with TeacherClient(s.url + "/teacher/", retries=NO_RETRIES) as client:
            assert client.models() == []
    finally:
        _Handler.do_GET = original
    assert seen == ["/teacher/v1/models"]


class _Compressing(BaseHTTPRequestHandler):
    """Gzips its answer when the request accepts gzip (as a compressing reverse proxy does)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body, gzipped = MODELS, "gzip" in self.headers.get("accept-encoding", "")
        if gzipped:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if gzipped:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_answers_come_unencoded_since_the_exchange_decodes_no_content_encoding():
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Compressing)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        with TeacherClient(f"http://127.0.0.1:{proxy.server_address[1]}", retries=NO_RETRIES) as client:
            assert client.models() == []
    finally:
        proxy.shutdown()
        thread.join()
        proxy.server_close()


def test_a_refusal_sent_before_the_body_was_read_is_the_answer():
    # A server at its connection cap answers 503 with Retry-After and closes without reading the request's
    # body: the client's send fails, and the answer it already has decides the error (and the wait).
    listener = socket.create_server(("127.0.0.1", 0))
    answer = json.dumps({"error": {"code": "UNAVAILABLE", "message": "too many connections"}}).encode()

    def refuse() -> None:
        conn, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(answer), answer))  # fmt: skip
        conn.close()  # the unread body makes this a reset

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with TeacherClient(url, retries=NO_RETRIES, timeout=10) as client, pytest.raises(TeacherServiceError) as info:
            client.logits("m", [list(range(1, 2_000_000))], [1])  # a body of about 16 MB
    finally:
        thread.join(timeout=10)
        listener.close()
    assert (info.value.code, info.value.status, info.value.retry_after) == ("UNAVAILABLE", 503, 7.0)
