"""Kept-alive HTTP/1.1 connections of the standard library (`http.client`) to one plain-HTTP server.

The blocking HTTP transport sends through these where no proxy applies and the URL is http:// (TLS and
proxies go through httpx). Why: a one-sequence logits call spends more time in the client's HTTP stack
than in the server's, and http.client's request/response path is leaner than httpx's (httpcore and h11):
0.4-0.5 ms less client CPU per one-sequence call on 2 cores (bench/client_http.py, both against the same
server).

Thread-safe: each request takes an idle connection (or opens one) and gives it back when the answer is
read whole. Before it is reused, an idle connection whose socket has become readable (the server closed it,
e.g. after its idle timeout) is dropped; a request whose reused connection fails before any byte of the
answer (the server closed it just then) is sent once more on a new connection, as httpx does not but
urllib3 does, since every request of this client is idempotent.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from email.message import Message

MAX_IDLE = 32  # idle connections kept; more (after a burst of threads) are closed when given back
# Errors of a reused connection that the server closed between requests: the answer never began.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class PlainHttpConnections:
    """`request(method, target, headers, body, timeout)` -> (status, headers, body) over kept-alive
    connections to `host`:`port`; raises OSError (TimeoutError on a timeout) or http.client.HTTPException."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, Message, bytes]:
        connection, reused = self._take(timeout)
        try:
            answer = _exchange(connection, method, target, headers, body)
        except _STALE:
            connection.close()
            if not reused:
                raise
            connection, reused = self._open(timeout), False
            try:
                answer = _exchange(connection, method, target, headers, body)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        status, message, content, will_close = answer
        if will_close:
            connection.close()
        else:
            self._give_back(connection)
        return status, message, content

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for connection in idle:
            connection.close()

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._open(timeout), False
            if _usable(connection):
                connection.sock.settimeout(timeout)
                return connection, True
            connection.close()

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        connection.connect()
        # Head and body leave in separate sends; without this the body would wait for the head's ACK.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()


def _exchange(
    connection: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, Message, bytes, bool]:
    connection.request(method, target, body=body, headers=headers)
    response = connection.getresponse()
    content = response.read()
    return response.status, response.headers, content, response.will_close


def _usable(connection: http.client.HTTPConnection) -> bool:
    """An idle connection can take a request: its socket is open and has nothing to read (a readable idle
    socket means the server closed it, or sent something no request asked for)."""
    sock = connection.sock
    if sock is None or sock.fileno() < 0:
        return False
    if hasattr(select, "poll"):  # select.select refuses descriptors above 1023, common in a busy trainer
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    return not select.select([sock], [], [], 0)[0]
