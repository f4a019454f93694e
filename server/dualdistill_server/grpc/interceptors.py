"""The gRPC side of errors.py: one interceptor that maps every exception of a Teacher method to its status.

For each call of a `dualdistill.v1.Teacher` method it opens a RequestContext (id from the
`x-request-id` metadata, else a fresh one, returned in the trailing metadata), turns a raised exception
into `context.abort(code, detail)` via `errors.to_service_error` (unknown errors: INTERNAL, details
logged here, not sent), adds `retry-after` for retryable codes and `x-dualdistill-field` naming the bad
field, and records the request metrics. Health and reflection calls pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .. import context
from ..errors import ServiceError, is_unexpected, to_service_error
from ..metrics import Metrics

log = logging.getLogger(__name__)
TEACHER_SERVICE = "dualdistill.v1.Teacher"


def _metadata_value(metadata: Any, key: str) -> str:
    for item_key, value in metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{TEACHER_SERVICE}/"):
            return handler
        method = details.method
        request_id = _metadata_value(details.invocation_metadata, "x-request-id")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, behavior: Callable, method: str, request_id: str) -> Callable:
        async def unary(request: Any, rpc_context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self._metrics, method, request_id, rpc_context)
            try:
                return await behavior(request, rpc_context)
            except BaseException as exc:
                await call.fail(exc)
                raise  # only reached for aborts and cancellations (fail() aborts otherwise)
            finally:
                call.finish()

        return unary

    def _wrap_stream(self, behavior: Callable, method: str, request_id: str) -> Callable:
        async def stream(request_iterator: AsyncIterator, rpc_context: grpc.aio.ServicerContext) -> AsyncIterator:
            call = _Call(self._metrics, method, request_id, rpc_context)
            try:
                async for response in behavior(request_iterator, rpc_context):
                    yield response
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                call.finish()

        return stream


class _Call:
    """Bookkeeping of one RPC: its request context, outcome code and timing."""

    def __init__(self, metrics: Metrics, method: str, request_id: str, rpc_context: grpc.aio.ServicerContext):
        self.metrics = metrics
        self.method = method
        self.rpc_context = rpc_context
        self.ctx, self.token = context.open_request(request_id)
        self.begin = time.perf_counter()
        rpc_context.set_trailing_metadata((("x-request-id", self.ctx.request_id),))

    async def fail(self, exc: BaseException) -> None:
        """Abort the RPC with the status of `exc` (re-raises aborts and cancellations as they are)."""
        if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted on its own
            code = self.rpc_context.code()
            self.ctx.code = getattr(code, "name", str(code)) if code is not None else "UNKNOWN"
            return
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # client left or deadline passed
            self.ctx.code = self.ctx.code or "CANCELLED"
            return
        if not isinstance(exc, Exception):
            return
        error: ServiceError = to_service_error(exc, self.ctx.request_id)
        self.ctx.code = error.code_name
        if is_unexpected(error):
            log.error("%s failed", self.method, exc_info=exc)
        else:
            log.info("%s refused: %s %s", self.method, error.code_name, error.detail)
        trailing = [("x-request-id", self.ctx.request_id)]
        if error.retry_after_seconds is not None:
            trailing.append(("retry-after", str(error.retry_after_seconds)))
        if error.field:
            trailing.append(("x-dualdistill-field", error.field))
        self.rpc_context.set_trailing_metadata(tuple(trailing))
        await self.rpc_context.abort(error.grpc_code, error.detail)

    def finish(self) -> None:
        seconds = time.perf_counter() - self.begin
        code = self.ctx.code or "OK"
        self.metrics.observe_request(self.method, self.ctx.model, code, seconds)
        log.info(
            "%s %s", self.method, code,
            extra={"route": self.method, "code": code, "model": self.ctx.model, "seconds": round(seconds, 6)},
        )
        context.close_request(self.token)
