"""Clients of the teacher service: `TeacherClient` (blocking) and `AsyncTeacherClient` (asyncio), over
gRPC or HTTP, with retries, timeouts and the tokenizer handshake. docs/client.md is the guide."""

from dualdistill.client.aio import AsyncTeacherClient
from dualdistill.client.errors import TeacherServiceError, TokenizerMismatchError
from dualdistill.client.retry import NO_RETRIES, CallStats, RetryPolicy
from dualdistill.client.sync import TeacherClient
from dualdistill.client.types import Completion, ModelInfo

__all__ = [
    "NO_RETRIES",
    "AsyncTeacherClient",
    "CallStats",
    "Completion",
    "ModelInfo",
    "RetryPolicy",
    "TeacherClient",
    "TeacherServiceError",
    "TokenizerMismatchError",
]
