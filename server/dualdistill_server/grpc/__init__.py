"""gRPC transport (grpc.aio): Teacher servicer, health, reflection, error-mapping interceptor."""

from .server import GrpcTransport

__all__ = ["GrpcTransport"]
