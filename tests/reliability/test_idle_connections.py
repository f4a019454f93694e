"""Connections that never complete a request are closed (issue 18, item 2), with raw sockets on loopback.

A server of its own with a 1 s header timeout and room for 8 connections per transport: idle
connections, half-sent request heads and kept-alive connections that go quiet are all closed after the
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
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def guarded_server(tiny_model_dir):
    args = ("--header-timeout-seconds", str(HEADER_TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS),
            "--log-level", "warning")
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
