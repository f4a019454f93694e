"""Every error the service reports, and the ONE table that maps it to an HTTP status and a gRPC code.

The core raises these typed errors; the HTTP exception handlers and the gRPC interceptor only call
`to_service_error` and read `http_status` / `grpc_code` from the result. Anything that is not a
`ServiceError` (a bug, a torch error) becomes `InternalError` whose message carries the request id and
nothing of the exception, which is logged server-side instead.

Wire shape (HTTP body; gRPC details carry the same message):
    {"error": {"code": "<GRPC_CODE_NAME>", "message": "...", "field": "sequences[0].start" | null}}
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import grpc
from pydantic import ValidationError


class ServiceError(Exception):
    """Base of the errors clients see. Subclasses pin (grpc_code, http_status); `field` names the culprit."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    retry_after_seconds: int | None = None  # sent as Retry-After (HTTP) / retry-after (gRPC)

    def __init__(self, message: str, field: str | None = None, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if retry_after_seconds is not None:  # this instance knows better than its class (a rate limit's wait)
            self.retry_after_seconds = retry_after_seconds

    @property
    def code_name(self) -> str:
        return self.grpc_code.name

    @property
    def detail(self) -> str:
        """One line for gRPC status details and logs: the field first, so it is never lost."""
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code_name, "message": self.detail, "field": self.field}}


class InvalidArgument(ServiceError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422


class ModelNotFound(ServiceError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unauthenticated(ServiceError):
    """No API key, or one this server does not know (the message never repeats the key)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ResourceExhausted(ServiceError):
    """The queue is full, or a tenant is over its rate or concurrency limit: retrying later helps."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    retry_after_seconds = 1


class PayloadTooLarge(ServiceError):
    """The request body is over the limit: retrying the same body never helps, so no Retry-After."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class Unavailable(ServiceError):
    """Models still loading, or the server is draining: another replica (or a later try) will answer."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    retry_after_seconds = 1


class DeadlineExceeded(ServiceError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class InternalError(ServiceError):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500


class Cancelled(ServiceError):
    """The client went away before its result was ready (HTTP 499: nobody reads it)."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499


# HTTP statuses produced outside our handlers (unknown route, wrong method...) -> code names for the
# error body and the metrics' `code` label.
_CODE_OF_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_name_for_http_status(status: int) -> str:
    if status < 400:
        return "OK"
    return _CODE_OF_HTTP_STATUS.get(status, "UNKNOWN")


def field_path(loc: Sequence[str | int]) -> str | None:
    """Pydantic location -> the JSON path clients know: ('sequences', 0, 'start') -> 'sequences[0].start'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("body",):  # FastAPI prefixes body fields with 'body'
            out += f".{part}" if out else str(part)
    return out or None


def from_validation_errors(errors: Sequence[dict[str, Any]]) -> InvalidArgument:
    """The first pydantic error as an InvalidArgument naming its field (the others are in the message)."""
    if not errors:
        return InvalidArgument("invalid request")
    first = errors[0]
    field = field_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field (not part of the API)"
    elif first.get("type") == "json_invalid":  # loc is a byte offset, not a field
        field = None
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return InvalidArgument(message, field=field)


def to_service_error(exc: BaseException, request_id: str = "") -> ServiceError:
    """Any exception -> the ServiceError a client sees. Unknown ones leak nothing but the request id."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_errors(exc.errors(include_url=False))
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return DeadlineExceeded("the request's deadline passed before its result was ready")
    suffix = f" (request id {request_id})" if request_id else ""
    return InternalError(f"internal error{suffix}; the server log has the details")


def is_unexpected(error: ServiceError) -> bool:
    """True for errors that are the server's fault (logged with a traceback)."""
    return isinstance(error, InternalError)
