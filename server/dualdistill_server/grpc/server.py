"""The gRPC transport: a grpc.aio server with the Teacher servicer, grpc.health.v1 and reflection.

Health follows the service's readiness, both overall ("") and for "dualdistill.v1.Teacher": NOT_SERVING
while models load and from the moment draining starts, SERVING in between.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc

from ..config import ServerConfig
from ..core import TeacherService
from .interceptors import TEACHER_SERVICE, ServiceInterceptor, request_bounds
from .servicer import TeacherServicer

log = logging.getLogger(__name__)
HEALTH_NAMES = ("", TEACHER_SERVICE)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcTransport:
    """`await start()` binds and serves; `port` is the bound port (useful with port 0)."""

    def __init__(self, service: TeacherService, config: ServerConfig) -> None:
        self._service = service
        self._config = config
        limit = config.max_message_bytes
        # Requests get their own, smaller bound: grpc copies a received message into Python on the event
        # loop before any check of ours runs, so its size bounds how long one tenant can stall the others.
        receive_limit = min(limit, config.max_receive_message_bytes)
        self.server = grpc.aio.server(
            interceptors=[
                ServiceInterceptor(
                    service.metrics, service.api_keys, service.limits,
                    request_bounds=request_bounds(config.max_queue_tokens, config.max_body_bytes),
                )
            ],
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", receive_limit),
                ("grpc.so_reuseport", 0),
                # Connections that never finish the HTTP/2 handshake, and more than max_connections.
                ("grpc.server_handshake_timeout_ms", int(config.header_timeout_seconds * 1000)),
                ("grpc.max_allowed_incoming_connections", config.max_connections),  # a port in use must fail loudly, not be shared
            ],
        )
        teacher_pb2_grpc.add_TeacherServicer_to_server(TeacherServicer(service), self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name, health_pb2.DESCRIPTOR.services_by_name[
                "Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = 0
        self._health_updates: set[asyncio.Task] = set()

    async def start(self) -> int:
        await self._set_health(False)  # HealthServicer starts with "" SERVING; not before models load
        try:
            self.port = self.server.add_insecure_port(host_port(self._config.host, self._config.grpc_port))
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC to {host_port(self._config.host, self._config.grpc_port)}: {exc}") from exc
        await self.server.start()
        self._service.subscribe(self._on_readiness)
        return self.port

    def _on_readiness(self, ready: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._set_health(ready))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _set_health(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_NAMES:
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds, then cancel them."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
