"""Typed client errors, and the ONE place that maps transport failures onto them.

Every failure a `TeacherClient` call can meet (an HTTP error response, a gRPC status, a refused connection,
a timeout) becomes a `TeacherServiceError` with the service's gRPC code name, so callers handle one type
whatever the transport. `status` is the HTTP status the failure stands for; it drives the retry decision
(`RetryPolicy.should_retry`), so both transports retry exactly the same failures.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

# The contract's code <-> HTTP status table (docs/api.md); also used for gRPC statuses so that `status`
# means the same on both transports.
HTTP_STATUS_OF_CODE: dict[str, int] = {
    "INVALID_ARGUMENT": 422,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
}
# For responses without our error body (a proxy's 502 page, a bare 413 from the body-size limit).
CODE_OF_HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# A failure with no response at all stands for these statuses in the retry decision.
NO_RESPONSE_STATUS: dict[str, int] = {"UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


class TeacherServiceError(Exception):
    """A failed teacher-service call.

    code: gRPC code name ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", ...).
    message: the server's message (or what went wrong on the way to it).
    field: the request field the server blamed, e.g. "sequences[0].start", else None.
    status: HTTP status of the response; for gRPC the contract's HTTP equivalent of the code (a message
        over the size limit counts as 413); None when no response arrived (connection refused or reset,
        timeout).
    retry_after: seconds the server asked us to wait (Retry-After), else None.
    transport: "http" | "grpc" when a response carried the error, else None.
    attempts: how many attempts were made before giving up (set by the retry loop).
    """

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        status: int | None = None,
        *,
        retry_after: float | None = None,
        transport: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.retry_after = retry_after
        self.transport = transport
        self.attempts = 1
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        status = f"HTTP {self.status} " if self.transport == "http" else ""
        tries = f"; gave up after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{status}{self.code}: {self.message}{where}{tries}"

    @property
    def effective_status(self) -> int:
        """`status`, or the status a response-less failure stands for (503 unreachable, 504 timeout)."""
        if self.status is not None:
            return self.status
        return NO_RESPONSE_STATUS.get(self.code, 500)


class TokenizerMismatchError(ValueError):
    """The local tokenizer does not produce the ids the served model was trained on."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds ("3", "0.5") or an HTTP date; None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def from_http_response(status: int, headers: Any, content: bytes) -> TeacherServiceError:
    """An error response (status >= 400) -> TeacherServiceError, using the body's {"error": {...}}."""
    code, message, field = (
        CODE_OF_HTTP_STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
        "",
        None,
    )
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        field = error.get("field")
    elif isinstance(body, dict) and "detail" in body:  # a framework-generated error (not our handler)
        message = json.dumps(body["detail"])
    if not message:
        message = content[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return TeacherServiceError(
        code,
        message,
        field,
        status,
        retry_after=parse_retry_after(headers.get("retry-after")),
        transport="http",
    )


def from_grpc_error(error: Any) -> TeacherServiceError:
    """A grpc.RpcError (sync or aio) -> TeacherServiceError.

    The field and Retry-After come from trailing metadata ("x-dualdistill-field", "retry-after") when the
    server sends them. gRPC reports an oversized message as RESOURCE_EXHAUSTED; that is not overload but a
    request that can never pass, so it gets status 413 (not retried).
    """
    code = error.code().name
    message = error.details() or code
    trailers = {}
    try:
        trailers = {key.lower(): value for key, value in (error.trailing_metadata() or ())}
    except Exception:  # noqa: BLE001 - a locally generated status has no trailers on some versions
        trailers = {}
    status = HTTP_STATUS_OF_CODE.get(code, 500)
    if code == "RESOURCE_EXHAUSTED" and "larger than max" in message:
        status = 413
    field = trailers.get("x-dualdistill-field") or None
    return TeacherServiceError(
        code,
        message,
        field,
        status,
        retry_after=parse_retry_after(trailers.get("retry-after")),
        transport="grpc",
    )


def unreachable(target: str, cause: BaseException) -> TeacherServiceError:
    """No response: the connection was refused, reset or closed mid-request."""
    return TeacherServiceError("UNAVAILABLE", f"teacher service at {target} unreachable: {cause!r}")


def timed_out(target: str, timeout: float, cause: BaseException) -> TeacherServiceError:
    """No (complete) response within the call's timeout."""
    return TeacherServiceError(
        "DEADLINE_EXCEEDED", f"no answer from {target} within {timeout:g} s ({type(cause).__name__})"
    )
