"""Connections that never complete a request are closed (issue 18, item 2), with raw sockets on loopback.

A server of its own with a 1 s header timeout, a 2 s body timeout and room for 8 connections per
transport: idle connections, half-sent request heads and kept-alive connections that go quiet are all
closed after the header timeout; a body trickled a byte at a time is cut off with 408 after the body
timeout; a connection over the cap is answered 503 and closed at once; normal requests go on working.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import TINY_MODEL_NAME
from tests.fixtures.server_process import start_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def guarded_server(tiny_model_dir):
    args = ("--header-timeout-seconds", str(HEADER_TIMEOUT_S), "--body-timeout-seconds", str(BODY_TIMEOUT_S),
            "--max-connections", str(MAX_CONNECTIONS), "--log-level", "warning")
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *args) as server:
        yield server


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _read_until_closed(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """(closed by the server within `within` seconds, everything it sent)."""
    sock.settimeout(0.2)
    received, deadline = b"", time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def _serves(server) -> bool:
    return httpx.get(server.http_url + "/healthz", timeout=10).status_code == 200


def test_http_connections_that_never_finish_a_head_are_closed(guarded_server) -> None:
    server = guarded_server
    silent = [_connect(server.http_address) for _ in range(3)]
    partial = [_connect(server.http_address) for _ in range(3)]
    for sock in partial:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the end of the head
    kept_alive = _connect(server.http_address)
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    begin = time.monotonic()
    outcomes = [(_read_until_closed(sock, 4 * HEADER_TIMEOUT_S + 2), sock) for sock in [*silent, *partial]]
    closed_after = time.monotonic() - begin
    assert all(closed for (closed, _), _ in outcomes), [data for (_, data), _ in outcomes]
    assert all(data == b"" for (_, data), _ in outcomes[:3])  # nothing sent: closed without an answer
    assert all(data.startswith(b"HTTP/1.1 408 ") for (_, data), _ in outcomes[3:]), outcomes[3][0]
    closed, data = _read_until_closed(kept_alive, 4 * HEADER_TIMEOUT_S + 2)
    assert closed and data.startswith(b"HTTP/1.1 200 "), data  # answered, then closed once it went quiet
    assert closed_after < 4 * HEADER_TIMEOUT_S + 2
    for sock in [*silent, *partial, kept_alive]:
        sock.close()
    assert _serves(server)


def _logits_request_head(body: bytes) -> bytes:
    return (b"POST /v1/logits HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body))


def test_a_trickled_body_is_cut_off_after_the_body_timeout(guarded_server) -> None:
    server = guarded_server
    body = b'{"model": "%s", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}' % TINY_MODEL_NAME.encode()
    trickled = _connect(server.http_address)
    trickled.sendall(_logits_request_head(body))
    begin, sent, received = time.monotonic(), 0, b""
    try:  # one byte every 0.25 s: the whole body would take about 17 s
        while sent < len(body) and time.monotonic() - begin < 4 * BODY_TIMEOUT_S + 2:
            trickled.sendall(body[sent : sent + 1])
            sent += 1
            closed, received = _read_until_closed(trickled, 0.25)
            if closed or received:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    cut_after = time.monotonic() - begin
    if not received:
        received = _read_until_closed(trickled, 2.0)[1]
    trickled.close()
    assert received.startswith(b"HTTP/1.1 408 ") and b"body_timeout_seconds" in received, received
    assert sent < len(body), "the body was never cut off"
    assert BODY_TIMEOUT_S - 0.1 <= cut_after < BODY_TIMEOUT_S + 2, cut_after  # not the header timeout's 1 s


def test_a_body_sent_in_pieces_within_the_timeout_is_answered(guarded_server) -> None:
    server = guarded_server
    body = b'{"model": "%s", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}' % TINY_MODEL_NAME.encode()
    sock = _connect(server.http_address)
    sock.sendall(_logits_request_head(body))
    for piece in (body[:20], body[20:40], body[40:]):  # 1.2 s in all: past the header timeout, within the body's
        time.sleep(0.4)
        sock.sendall(piece)
    closed, received = _read_until_closed(sock, 30)
    sock.close()
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]


def test_http_connections_over_the_cap_get_503_and_are_closed(guarded_server) -> None:
    server = guarded_server
    time.sleep(HEADER_TIMEOUT_S + 0.5)  # the previous test's connections are gone
    held = [_connect(server.http_address) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.3)  # accepted by the server
    extra = _connect(server.http_address)
    closed, data = _read_until_closed(extra, 2.0)
    assert closed and data.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in data.lower(), data
    for sock in held:
        assert _read_until_closed(sock, 4 * HEADER_TIMEOUT_S + 2)[0]
        sock.close()
    extra.close()
    assert _serves(server)


def test_grpc_connections_that_never_handshake_are_closed(guarded_server) -> None:
    server = guarded_server
    silent = [_connect(server.grpc_target) for _ in range(3)]
    for sock in silent:
        closed, _ = _read_until_closed(sock, 4 * HEADER_TIMEOUT_S + 5)
        assert closed
        sock.close()
