"""The HTTP side of errors.py: ServiceError -> JSON error response, and FastAPI's exception handlers."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .. import context
from ..errors import (
    InvalidArgument,
    ServiceError,
    code_name_for_http_status,
    from_validation_errors,
    is_unexpected,
)

log = logging.getLogger(__name__)


def error_response(error: ServiceError) -> Response:
    """The contract's error body with the status, Retry-After and x-request-id headers."""
    headers = {}
    if error.retry_after_seconds is not None:
        headers["retry-after"] = str(error.retry_after_seconds)
    if error.http_status == 401:
        headers["www-authenticate"] = "Bearer"
    ctx = context.current()
    if ctx is not None:
        ctx.code = error.code_name
        headers["x-request-id"] = ctx.request_id
    if is_unexpected(error):
        log.error("request failed: %s", error.detail)
    else:
        log.info("request refused: %s %s", error.code_name, error.detail)
    body = json.dumps(error.to_body(), separators=(",", ":"))
    return Response(body, status_code=error.http_status, media_type="application/json", headers=headers)


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(from_validation_errors(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route 404, wrong method 405) in our error shape. FastAPI's 400 for a
    body it cannot read (not UTF-8) is an invalid argument like any other bad body: 422."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        return error_response(InvalidArgument(f"the body could not be read as UTF-8 JSON ({exc.detail})"))
    code = code_name_for_http_status(exc.status_code)
    ctx = context.current()
    if ctx is not None:
        ctx.code = code
    body = json.dumps({"error": {"code": code, "message": str(exc.detail), "field": None}})
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Typed errors, validation errors and routing errors. Anything else is caught by the request
    middleware (it must be: Starlette answers bare exceptions outside the middleware stack)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
