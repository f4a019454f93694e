"""One pure-ASGI middleware around the whole app: request id, API key, tenant slot, body limit, metrics,
access log, last-resort 500.

Pure ASGI (not BaseHTTPMiddleware) so it adds no task switch per request and sees every response,
including those of the exception handlers. Order of work per request:
1. open a RequestContext with the client's `x-request-id` (or a fresh id); every response gets the header;
2. data routes (/v1/*, and the TRL dialect's /get_sequence_logprobs/): `Authorization: Bearer KEY` -> tenant (401 without a valid key; the key is never
   logged), then one of the tenant's concurrency slots for the whole request (429 when all are taken),
   freed however the request ends; probes, /metrics and the OpenAPI pages stay open;
3. refuse bodies over `max_body_bytes` with 413, from Content-Length before reading, else while reading
   (the body is read here and replayed to the app: FastAPI turns errors raised while it reads a body into
   a generic 400, so the limit cannot be enforced from inside);
4. data routes' responses get a `server-timing` header: the stages the request went through (context.py);
5. after the response: `dualdistill_requests_total` / `dualdistill_request_seconds` /
   `dualdistill_response_bytes_total` and one log line;
6. `direct_routes` (POST /v1/logits): the route's endpoint is called from here, past FastAPI's router and
   its exception, exit-stack and error middlewares, which cost about 0.1 ms of the event loop's CPU per
   one-sequence call (`bench/service_ab.py --thread-rounds 16` against a checkout without it: -0.11 ms,
   the median of paired rounds). The endpoint is the same function FastAPI registers (FastAPI still
   documents the route and answers its other methods), and its errors are answered below as FastAPI's
   handler answers them: a ServiceError with `error_response`, anything else with a logged 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import context
from ..core.api_keys import ApiKeys
from ..core.limits import TenantLimits
from ..errors import InternalError, PayloadTooLarge, ServiceError, code_name_for_http_status
from ..metrics import Metrics
from .dialects import EXTRA_DATA_ROUTES, dialect_of
from .errors import error_response

log = logging.getLogger("dualdistill_server.access")
_QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # probes: logged at debug level only
DATA_PREFIX = "/v1/"  # routes that need a key (when keys are configured) and count against tenant limits


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        api_keys: ApiKeys,
        limits: TenantLimits,
        route_paths: frozenset[str] = frozenset(),
        direct_routes: Mapping[tuple[str, str], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        # (method, path) -> the ASGI app of that one route, called here instead of FastAPI's stack (see
        # the module's docstring, item 6)
        self.direct_routes = dict(direct_routes or {})
        # Requests refused here never reach the router; their metrics label is still the route when the
        # path is one of the app's (a bounded set), else "unmatched".
        self.route_paths = route_paths
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.api_keys = api_keys
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        ctx, token = context.open_request(headers.get(b"x-request-id", b"").decode("latin-1"))
        status = 500
        started = False
        sent_bytes = 0

        path = scope.get("path", "")
        data_route = path.startswith(DATA_PREFIX) or path in EXTRA_DATA_ROUTES

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, sent_bytes
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                out = list(message.get("headers", []))
                if not any(key.lower() == b"x-request-id" for key, _ in out):
                    out.append((b"x-request-id", ctx.request_id.encode("latin-1")))
                if data_route:
                    out.append((b"server-timing", context.server_timing(ctx).encode("latin-1")))
                message = {**message, "headers": out}
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            if data_route:
                ctx.tenant = self.api_keys.tenant_for(headers.get(b"authorization", b"").decode("latin-1"))
                with self.limits.slot(ctx.tenant):
                    await self._serve(scope, headers, receive, send_with_id)
            else:
                await self._serve(scope, headers, receive, send_with_id)
        except ServiceError as error:  # no key, a wrong key, or the tenant's slots all taken
            if not started:
                await error_response(error, scope.get("path"))(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if not started:
                error = InternalError(f"internal error (request id {ctx.request_id})")
                await error_response(error, scope.get("path"))(scope, receive, send_with_id)
        finally:
            self._record(scope, ctx, status, time.perf_counter() - ctx.began, sent_bytes)
            context.close_request(token)

    async def _serve(self, scope: Scope, headers: dict, receive: Receive, send: Send) -> None:
        body_receive = await self._read_body(scope, headers, receive, send)
        if body_receive is not None:
            route = self.direct_routes.get((scope.get("method"), scope.get("path")), self.app)
            await route(scope, body_receive, send)

    async def _read_body(self, scope: Scope, headers: dict, receive: Receive, send: Send) -> Receive | None:
        """A receive() that replays the whole body, or None after answering 413."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, int(declared))
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, size)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: http.disconnect, when the client goes away

        return replay

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        error: ServiceError = PayloadTooLarge(
            f"the request body has {size}+ bytes, over the limit of {self.max_body_bytes} (max_body_bytes); "
            "send fewer sequences per request"
        )
        await error_response(error, scope.get("path"))(scope, receive, send)

    def _record(
        self, scope: Scope, ctx: context.RequestContext, status: int, seconds: float, sent_bytes: int
    ) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or (scope.get("path") if scope.get("path") in self.route_paths else None)
        path = path or "unmatched"
        code = ctx.code or code_name_for_http_status(status)
        self.metrics.observe_request(
            path, ctx.model, code, seconds, tenant=ctx.tenant, response_bytes=sent_bytes, dialect=dialect_of(path)
        )
        level = logging.DEBUG if path in _QUIET_ROUTES else logging.INFO
        log.log(
            level,
            "%s %s %d",
            scope.get("method"),
            scope.get("path"),
            status,
            extra={"route": path, "status": status, "code": code, "model": ctx.model, "seconds": round(seconds, 6),
                   "bytes": sent_bytes},
        )
