"""The Teacher servicer: a thin adapter (protobuf -> pydantic request -> TeacherService -> protobuf).

Errors are not handled here: they propagate to `interceptors.ServiceInterceptor`, the one place that
maps them to gRPC status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from pydantic import ValidationError

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc

from .. import context
from ..core import TeacherService
from ..core.payload import encodes_inline
from ..errors import ServiceError, to_service_error
from . import convert

# Requests of one StreamLogits call computed concurrently; when all slots are busy the server stops
# reading the stream, so gRPC flow control slows the client down instead of the queue overflowing.
STREAM_MAX_IN_FLIGHT = 32
_END_OF_INPUT = object()


class _InputBroken:
    """The request stream ended with an error; reported after the requests read before it are answered."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class TeacherServicer(teacher_pb2_grpc.TeacherServicer):
    def __init__(self, service: TeacherService) -> None:
        self._service = service

    async def ListModels(self, request: pb.ListModelsRequest, rpc_context: grpc.aio.ServicerContext):
        return pb.ListModelsResponse(models=[convert.model_info(info) for info in self._service.list_models()])

    async def GetLogits(self, request: pb.LogitsRequest, rpc_context: grpc.aio.ServicerContext):
        return await self._logits(request, rpc_context)

    async def Generate(self, request: pb.GenerateRequest, rpc_context: grpc.aio.ServicerContext):
        body = await convert.generate_request(request, self._service.config)
        result = await self._service.generate(
            body, request_id=context.resolve_request_id(body.request_id), timeout=rpc_context.time_remaining()
        )
        return convert.generate_response(result)

    async def StreamLogits(
        self, request_iterator: AsyncIterator[pb.LogitsRequest], rpc_context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LogitsResponse]:
        """Requests are computed concurrently (up to STREAM_MAX_IN_FLIGHT); responses go out as they
        finish, each with its request's request_id. The first failing request aborts the stream."""
        outbox: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        workers: set[asyncio.Task] = set()
        started = 0

        async def work(message: pb.LogitsRequest) -> None:
            try:
                await outbox.put(await self._logits(message, rpc_context, in_stream=True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ServiceError | ValidationError):
                    exc = to_service_error(exc)
                    if message.request_id:  # say which request of the stream failed
                        exc.message = f"stream request {message.request_id!r}: {exc.message}"
                await outbox.put(exc)
            finally:
                slots.release()

        async def read() -> None:
            nonlocal started
            try:
                async for message in request_iterator:
                    await slots.acquire()
                    started += 1
                    task = asyncio.create_task(work(message))
                    workers.add(task)
                    task.add_done_callback(workers.discard)
            except Exception as exc:  # a corrupt message, or the stream broke while reading
                # Answer the requests read before it first: their results are good.
                await outbox.put(_InputBroken(exc))
                return
            await outbox.put(_END_OF_INPUT)

        reader = asyncio.create_task(read())
        delivered, input_done, broken = 0, False, None
        try:
            while not (input_done and delivered == started):
                item = await outbox.get()
                if item is _END_OF_INPUT:
                    input_done = True
                elif isinstance(item, _InputBroken):
                    input_done, broken = True, item.error
                elif isinstance(item, BaseException):
                    raise item
                else:
                    delivered += 1
                    yield item
            if broken is not None:
                raise broken
        finally:
            reader.cancel()
            for task in list(workers):
                task.cancel()

    async def _logits(
        self, message: pb.LogitsRequest, rpc_context: grpc.aio.ServicerContext, *, in_stream: bool = False
    ) -> pb.LogitsResponse:
        # A stream's requests share one context: their stages would add up, so only unary calls record them.
        with context.timed("parse", record=not in_stream):
            body = await convert.logits_request(message, self._service.config)
        request_id = context.resolve_request_id(body.request_id, adopt=not in_stream)
        result = await self._service.logits(body, request_id=request_id, timeout=rpc_context.time_remaining())
        with context.timed("encode", record=not in_stream):
            if encodes_inline(result, self._service.active_requests):
                return convert.logits_response(result, body.format)
            return await asyncio.to_thread(convert.logits_response, result, body.format)
