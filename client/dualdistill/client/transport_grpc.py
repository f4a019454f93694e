"""gRPC transport: one attempt of an `Operation` against service dualdistill.v1.Teacher.

Sync (grpc) and asyncio (grpc.aio) share the channel options, metadata and error mapping. The timeout of
an attempt is its gRPC deadline, which the server honours too (it drops work nobody waits for).
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from dualdistill.client import errors
from dualdistill.client.operations import Operation
from dualdistill.protocol.v1 import teacher_pb2_grpc

T = TypeVar("T")


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits, and a short reconnect backoff: gRPC's default grows to 120 s, which would keep
    a channel failing long after a restarted teacher is back; our own retry loop does the pacing.
    (grpc.min_reconnect_backoff_ms stays at its default: it is also the minimum connect timeout.)"""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _metadata(op: Operation[Any], api_key: str | None) -> tuple[tuple[str, str], ...]:
    pairs = [("x-request-id", op.request_id)]
    if api_key:
        pairs.append(("authorization", f"Bearer {api_key}"))
    return tuple(pairs)


def _failure(target: str, timeout: float, exc: grpc.RpcError) -> errors.TeacherServiceError:
    error = errors.from_grpc_error(exc)
    if error.code == "DEADLINE_EXCEEDED":
        error.message = f"no answer from {target} within {timeout:g} s ({exc.details()})"
    return error


class GrpcTransport:
    """Synchronous gRPC transport; `target` is "host:port"."""

    def __init__(self, target: str, api_key: str | None, secure: bool, max_message_bytes: int) -> None:
        self.target = target
        self._api_key = api_key
        options = channel_options(max_message_bytes)
        if secure:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = teacher_pb2_grpc.TeacherStub(self._channel)

    def send(self, op: Operation[T], timeout: float) -> T:
        method = getattr(self._stub, op.rpc)
        try:
            response = method(op.to_proto(), timeout=timeout, metadata=_metadata(op, self._api_key))
        except grpc.RpcError as exc:
            raise _failure(self.target, timeout, exc) from exc
        return op.from_proto(response)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    """asyncio gRPC transport. The channel is opened on first use, inside the running event loop
    (a grpc.aio channel belongs to the loop it was created in)."""

    def __init__(self, target: str, api_key: str | None, secure: bool, max_message_bytes: int) -> None:
        self.target = target
        self._api_key = api_key
        self._secure = secure
        self._options = channel_options(max_message_bytes)
        self._channel: grpc.aio.Channel | None = None
        self._stub: teacher_pb2_grpc.TeacherStub | None = None

    def _stub_now(self) -> teacher_pb2_grpc.TeacherStub:
        if self._stub is None:
            if self._secure:
                creds = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self.target, creds, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._stub = teacher_pb2_grpc.TeacherStub(self._channel)
        return self._stub

    async def send(self, op: Operation[T], timeout: float) -> T:
        method = getattr(self._stub_now(), op.rpc)
        try:
            response = await method(op.to_proto(), timeout=timeout, metadata=_metadata(op, self._api_key))
        except grpc.RpcError as exc:
            raise _failure(self.target, timeout, exc) from exc
        return op.from_proto(response)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None
