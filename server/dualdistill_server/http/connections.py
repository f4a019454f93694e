"""uvicorn's HTTP/1.1 protocol (httptools, llhttp's C parser) with three guards for connections that never
complete a request.

uvicorn arms its keep-alive timer only after a response, and cancels it on any byte received, so a
connection that sends nothing, or half a request head, stays open forever; `limit_concurrency` answers
503 only to a *complete* request, so idle connections pile up until the process runs out of file
descriptors. Here, per connection:
- header timeout: from the moment the connection opens, and again after each response, the client has
  `header_timeout_seconds` to deliver a complete request head (the parser reports the head complete);
  otherwise it gets 408 (when it had sent something) and the connection is closed;
- body timeout: once a request head is complete, its body must be complete within `body_timeout_seconds`
  (a client that trickles a declared body a byte at a time holds a connection and a request task for as
  long as it likes otherwise); else 408 (unless a response has started) and the connection is closed;
- cap: a connection accepted while `max_connections` are open gets 503 + Retry-After and is closed
  at once, before any byte of it is read.

httptools rather than h11 (uvicorn's pure-Python parser): about 0.2 ms less of the event loop's CPU per
one-sequence logits call (`bench/service_ab.py --thread-rounds 16`, paired rounds: -0.32 ms for this and
the direct /v1/logits route of middleware.py together, -0.11 ms of it the route's). Its parser callbacks
mark where a head and a body end, which is what the guards need.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


def _raw_response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


def guarded_protocol(
    header_timeout_seconds: float, max_connections: int, body_timeout_seconds: float
) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass with these limits (uvicorn.Config(http=...) takes the class)."""
    too_many = _raw_response(
        503, "Service Unavailable", "UNAVAILABLE",
        f"the server has {max_connections} connections open (max_connections); retry shortly",
        "retry-after: 1\r\n",
    )
    too_slow = _raw_response(
        408, "Request Timeout", "DEADLINE_EXCEEDED",
        f"no complete request head within {header_timeout_seconds:g} s (header_timeout_seconds)",
    )
    body_too_slow = _raw_response(
        408, "Request Timeout", "DEADLINE_EXCEEDED",
        f"the request body was not complete {body_timeout_seconds:g} s after its head (body_timeout_seconds)",
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _received_any = False
        _head_complete = False  # a request head arrived and its response is not complete
        _body_pending = False  # that request's body is not complete yet

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("connection refused: %d open (max_connections)", len(self.connections) - 1)
                transport.write(too_many)
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            self._cancel_body_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._received_any = True
            super().data_received(data)
            self._watch_body()

        def on_headers_complete(self) -> None:
            self._head_complete = self._body_pending = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_pending = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                # a pipelined request whose head was already parsed is under way now (or none is)
                self._head_complete = not self.cycle.response_complete
                self._received_any = False
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_seconds, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _watch_body(self) -> None:
            """Start the body clock when a head is complete and its body is not; stop it once it is."""
            if self._body_pending and not self.transport.is_closing():
                if self._body_timer is None:
                    self._body_timer = self.loop.call_later(body_timeout_seconds, self._body_timeout)
            else:
                self._cancel_body_timer()

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timeout(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or not self._body_pending:
                return
            log.info("connection closed: a request body incomplete after %g s (body_timeout_seconds)",
                     body_timeout_seconds)
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(body_too_slow)
            self.transport.close()

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self._head_complete:
                return  # a request head arrived in time (its body and response have no header timer)
            if self._received_any:
                self.transport.write(too_slow)
            self.transport.close()

    return GuardedHttpToolsProtocol
