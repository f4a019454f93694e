"""Kept-alive HTTP/1.1 connections to one plain-HTTP server (http11.py's exchange).

The blocking HTTP transport sends through these where no proxy applies and the URL is http:// (TLS and
proxies go through httpx). Why: a one-sequence logits call spends more time in the client's HTTP stack
than in the server's. httpx's request/response path (httpcore and h11) takes 0.5-0.8 ms more client CPU
per one-sequence call than these connections on 2 cores (bench/client_http.py: 1.22 against 0.69 ms back
to back, 1.66 against 0.90 ms after a 5 ms idle wait), and the standard library's http.client, which
they used before, about 0.24 ms more than http11.py's exchange (see there).

Thread-safe: each request takes an idle connection (or opens one) and gives it back when the answer is
read whole. Before it is reused, an idle connection whose socket has become readable (the server closed it,
e.g. after its idle timeout) is dropped; a request whose reused connection fails before the answer's
status line (the server closed it just then) is sent once more on a new connection, within what is left of
its timeout, as urllib3 does and httpx does not: every request of this client is idempotent. That resend is
the connection's, not a retry of the client's policy (`stats` does not count it).
"""

from __future__ import annotations

import http.client
import select
import threading
import time

from dualdistill.client.http11 import Answer, Connection, Headers

MAX_IDLE = 32  # idle connections kept; more (after a burst of threads) are closed when given back
# Errors of a reused connection that the server closed between requests: the answer never began.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class PlainHttpConnections:
    """`request(method, target, headers, body, timeout)` -> (status, headers, body) over kept-alive
    connections to `host`:`port`; raises OSError (TimeoutError on a timeout) or http.client.HTTPException.
    The exchange decodes no content encoding, so every request asks for none (`accept-encoding: identity`:
    a compressing proxy in front of the server then sends the bytes as they are)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, Headers, bytes]:
        if self._closed:
            raise RuntimeError("the client's HTTP connections are closed")
        headers = {**headers, "accept-encoding": "identity"}
        deadline = time.monotonic() + timeout
        connection, reused = self._take(timeout)
        try:
            answer = _exchange(connection, method, target, headers, body)
        except _STALE:
            connection.close()
            left = deadline - time.monotonic()
            if not reused or left <= 0:
                raise
            # The server closed the reused connection before answering (its idle timeout crossed the
            # request): once more on a new one, within what is left of the timeout.
            connection = self._open(left)
            try:
                answer = _exchange(connection, method, target, headers, body)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._give_back(connection)
        return answer.status, answer.headers, answer.content

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for connection in idle:
            connection.close()

    def _take(self, timeout: float) -> tuple[Connection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._open(timeout), False
            if _usable(connection):
                connection.settimeout(timeout)
                return connection, True
            connection.close()

    def _open(self, timeout: float) -> Connection:
        return Connection(self._host, self._port, timeout)

    def _give_back(self, connection: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()


def _exchange(connection: Connection, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
    """The request and its whole answer."""
    try:
        connection.send(method, target, headers, body)
    except (BrokenPipeError, ConnectionResetError) as exc:
        # A server may answer and close before it has read the whole request (a refusal such as 503 at
        # its connection cap, with a Retry-After): read what it said, if it said anything.
        try:
            return connection.read_answer(method)
        except (OSError, http.client.HTTPException):
            raise exc from None
    return connection.read_answer(method)


def _usable(connection: Connection) -> bool:
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
