"""The gRPC side of errors.py and of the API keys: one interceptor around every Teacher method.

For each call of a `dualdistill.v1.Teacher` method it opens a RequestContext (id from the
`x-request-id` metadata, else a fresh one, returned in the trailing metadata), checks the
`authorization: Bearer KEY` metadata (UNAUTHENTICATED without a valid key; the tenant goes into the
context), holds one of the tenant's concurrency slots for the whole call (a stream counts as one),
refuses a message that does not parse as protobuf with INVALID_ARGUMENT (grpc would say UNKNOWN, or
INTERNAL inside a stream), turns a raised exception into `context.abort(code, detail)` via `errors.to_service_error` (unknown
errors: INTERNAL, details logged here, not sent), adds `retry-after` for retryable codes and
`x-dualdistill-field` naming the bad field, and records the request metrics. Health and reflection
calls pass through untouched (they need no key).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .. import context
from ..core.api_keys import ApiKeys
from ..core.limits import TenantLimits
from ..errors import InvalidArgument, ServiceError, is_unexpected, to_service_error
from ..metrics import Metrics

log = logging.getLogger(__name__)
TEACHER_SERVICE = "dualdistill.v1.Teacher"


def _metadata_value(metadata: Any, key: str) -> str:
    for item_key, value in metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


_UNDECODABLE = object()  # what the lenient deserializer hands on for bytes that are not a valid message
INLINE_MESSAGE_BYTES = 64 * 1024  # larger messages are parsed in a worker thread, not on the event loop
LOGITS_METHODS = (f"/{TEACHER_SERVICE}/GetLogits", f"/{TEACHER_SERVICE}/StreamLogits")
GENERATE_METHOD = f"/{TEACHER_SERVICE}/Generate"


def max_logits_message_bytes(max_queue_tokens: int) -> int:
    """The most bytes a LogitsRequest the queue can admit takes: an int32 id is at most 5 bytes and each
    sequence (>= 2 ids) adds at most 18 bytes of framing (9 per id), plus the top-level fields."""
    return 14 * max_queue_tokens + 4096


@dataclass(frozen=True)
class MessageBound:
    """The most bytes a method's request may have, checked on the raw bytes before they are parsed:
    `field` is the field a refusal names, `source` the setting the bound comes from."""

    max_bytes: int
    field: str
    source: str


def request_bounds(max_queue_tokens: int, max_body_bytes: int) -> dict[str, MessageBound]:
    """Per method. Logits: what the queue can ever admit. Generate: max_body_bytes, the bound of an HTTP
    body; protobuf is never longer than the JSON of the same request, so both transports accept the same
    requests (the message limit alone, 256 MiB by default, let 8x more text reach the tokenizer)."""
    logits = MessageBound(max_logits_message_bytes(max_queue_tokens), "sequences", "from max_queue_tokens")
    return {
        **{method: logits for method in LOGITS_METHODS},
        GENERATE_METHOD: MessageBound(max_body_bytes, "prompts", "max_body_bytes, as for an HTTP body"),
    }


class _Oversized:
    def __init__(self, size: int, bound: MessageBound) -> None:
        self.size, self.bound = size, bound


class _Deferred:
    """A large message's bytes, parsed later in a worker thread."""

    def __init__(self, data: bytes, parse: Callable[[bytes], Any]) -> None:
        self.data, self.parse = data, parse


def _lenient(
    deserialize: Callable[[bytes], Any] | None, bound: MessageBound | None = None
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError (bad wire format, invalid UTF-8)
            return _UNDECODABLE

    def parse_or_defer(data: bytes) -> Any:  # runs on the event loop: only O(1) work for large messages
        if bound is not None and len(data) > bound.max_bytes:
            return _Oversized(len(data), bound)
        if len(data) > INLINE_MESSAGE_BYTES:
            return _Deferred(data, parse)
        return parse(data)

    return parse_or_defer


async def _checked(request: Any, method: str) -> Any:
    if isinstance(request, _Deferred):
        request = await asyncio.to_thread(request.parse, request.data)
    name = method.rsplit("/", 1)[-1]
    if isinstance(request, _Oversized):
        bound = request.bound
        raise InvalidArgument(
            f"the {name} request has {request.size} bytes; the most it may have is {bound.max_bytes} "
            f"({bound.source}); split it into smaller requests",
            field=bound.field,
        )
    if request is _UNDECODABLE:
        # The parser's own text names its internals; the client only needs to know what to fix.
        raise InvalidArgument(
            f"the {name} request is not a valid protobuf message (corrupt wire format, or a string that is "
            "not UTF-8)"
        )
    return request


async def _checked_stream(requests: AsyncIterator, method: str) -> AsyncIterator:
    async for request in requests:
        yield await _checked(request, method)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, metrics: Metrics, api_keys: ApiKeys, limits: TenantLimits, *,
        request_bounds: dict[str, MessageBound] | None = None,
    ) -> None:
        self._request_bounds = request_bounds or {}
        self._metrics = metrics
        self._api_keys = api_keys
        self._limits = limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        if not details.method.startswith(f"/{TEACHER_SERVICE}/"):
            return _parsed_leniently(handler, details.method)
        method = details.method
        bound = self._request_bounds.get(method)
        request_id = _metadata_value(details.invocation_metadata, "x-request-id")
        authorization = _metadata_value(details.invocation_metadata, "authorization")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, request_id, authorization),
                request_deserializer=_lenient(handler.request_deserializer, bound),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, request_id, authorization),
                request_deserializer=_lenient(handler.request_deserializer, bound),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, behavior: Callable, method: str, request_id: str, authorization: str) -> Callable:
        async def unary(request: Any, rpc_context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self._metrics, method, request_id, rpc_context)
            try:
                call.ctx.tenant = self._api_keys.tenant_for(authorization)
                with self._limits.slot(call.ctx.tenant):
                    response = await behavior(await _checked(request, method), rpc_context)
                call.response_bytes = response.ByteSize()
                call.set_trailers()
            except BaseException as exc:
                try:
                    await call.fail(exc)
                finally:
                    call.finish()
                raise  # only reached for aborts and cancellations (fail() aborts otherwise)
            call.finish_after_response()
            return response

        return unary

    def _wrap_stream(self, behavior: Callable, method: str, request_id: str, authorization: str) -> Callable:
        async def stream(request_iterator: AsyncIterator, rpc_context: grpc.aio.ServicerContext) -> AsyncIterator:
            call = _Call(self._metrics, method, request_id, rpc_context)
            try:
                call.ctx.tenant = self._api_keys.tenant_for(authorization)
                with self._limits.slot(call.ctx.tenant):
                    async for response in behavior(_checked_stream(request_iterator, method), rpc_context):
                        call.response_bytes += response.ByteSize()
                        yield response
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                call.finish()

        return stream


def _parsed_leniently(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """Health and reflection need no key and count in no metrics, but a body that does not parse gets
    INVALID_ARGUMENT from them too (grpc would answer UNKNOWN with the parser's exception class)."""

    async def refuse(rpc_context: grpc.aio.ServicerContext, exc: InvalidArgument) -> None:
        await rpc_context.abort(exc.grpc_code, exc.detail)

    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(request: Any, rpc_context: grpc.aio.ServicerContext) -> Any:
            try:
                request = await _checked(request, method)
            except InvalidArgument as exc:
                await refuse(rpc_context, exc)
            return await behavior(request, rpc_context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        stream_behavior = handler.unary_stream

        async def unary_stream(request: Any, rpc_context: grpc.aio.ServicerContext) -> AsyncIterator:
            try:
                request = await _checked(request, method)
            except InvalidArgument as exc:
                await refuse(rpc_context, exc)
            result = stream_behavior(request, rpc_context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a servicer that writes with context.write returns a coroutine
                await result

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        bidi_behavior = handler.stream_stream

        async def stream_stream(request_iterator: AsyncIterator, rpc_context: grpc.aio.ServicerContext):
            try:
                async for response in bidi_behavior(_checked_stream(request_iterator, method), rpc_context):
                    yield response
            except InvalidArgument as exc:
                await refuse(rpc_context, exc)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler


class _Call:
    """Bookkeeping of one RPC: its request context, outcome code and timing."""

    def __init__(self, metrics: Metrics, method: str, request_id: str, rpc_context: grpc.aio.ServicerContext):
        self.metrics = metrics
        self.method = method
        self.rpc_context = rpc_context
        self.ctx, self.token = context.open_request(request_id)
        self.response_bytes = 0
        rpc_context.set_trailing_metadata((("x-request-id", self.ctx.request_id),))

    def set_trailers(self) -> None:
        """After a unary response: the request id (the body's may have become the call's id) and the
        call's stage times (`server-timing`, as the HTTP header)."""
        self.rpc_context.set_trailing_metadata(
            (("x-request-id", self.ctx.request_id), ("server-timing", context.server_timing(self.ctx)))
        )

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
        """Record the call and close its request context, now."""
        self._record(time.perf_counter() - self.ctx.began)
        context.close_request(self.token)

    def finish_after_response(self) -> None:
        """`finish` for a unary response about to be returned: the metrics and the log line wait for the
        event loop's next turn. grpc.aio starts sending the response when the handler returns, before its
        task next yields, so this bookkeeping (about 0.1 ms of a one-sequence call on 2 CPU cores) is no
        longer part of the call's latency. The log line keeps the request's id and tenant: it runs in a
        copy of the request's context."""
        seconds = time.perf_counter() - self.ctx.began
        request_context = contextvars.copy_context()
        context.close_request(self.token)
        asyncio.get_running_loop().call_soon(self._record, seconds, context=request_context)

    def _record(self, seconds: float) -> None:
        code = self.ctx.code or "OK"
        self.metrics.observe_request(
            self.method, self.ctx.model, code, seconds, tenant=self.ctx.tenant, response_bytes=self.response_bytes,
            dialect="dualdistill",  # gRPC speaks only our own API
        )
        log.info(
            "%s %s", self.method, code,
            extra={"route": self.method, "code": code, "model": self.ctx.model, "seconds": round(seconds, 6),
                   "bytes": self.response_bytes},
        )
