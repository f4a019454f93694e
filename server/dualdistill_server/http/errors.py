"""The HTTP side of errors.py: ServiceError -> JSON error response, and FastAPI's exception handlers."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

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
from .dialects import VLLM_ERROR_ROUTES

log = logging.getLogger(__name__)


# vLLM's error `type` and HTTP status for each of our codes, on the routes of the vLLM/TRL dialects
# (vLLM answers invalid requests with 400, where our own API says 422).
_VLLM_ERROR = {
    "INVALID_ARGUMENT": (400, "BadRequestError"),
    "NOT_FOUND": (404, "NotFoundError"),
    "UNAUTHENTICATED": (401, "Unauthorized"),
    "RESOURCE_EXHAUSTED": (429, "Too Many Requests"),
    "UNAVAILABLE": (503, "ServiceUnavailableError"),
    "DEADLINE_EXCEEDED": (504, "Gateway Timeout"),
    "CANCELLED": (499, "Client Closed Request"),
    "UNIMPLEMENTED": (405, "Method Not Allowed"),
    "INTERNAL": (500, "InternalServerError"),
}


def _vllm_body(code: str, http_status: int, message: str, param: str | None) -> tuple[int, dict]:
    """vLLM's ErrorResponse: {"error": {"message", "type", "param", "code": HTTP status}}."""
    status, kind = _VLLM_ERROR.get(code, (http_status, "InternalServerError"))
    if http_status == 413:  # the body-size limit keeps its own status
        status, kind = 413, "Request Entity Too Large"
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(error: ServiceError, path: str | None = None) -> Response:
    """The contract's error body with the status, Retry-After and x-request-id headers; on the routes of
    the vLLM and TRL dialects (`path`), vLLM's body and statuses instead."""
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
    status, content = error.http_status, error.to_body()
    if path in VLLM_ERROR_ROUTES:
        status, content = _vllm_body(error.code_name, error.http_status, error.message, error.field)
    body = json.dumps(content, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(from_validation_errors(exc.errors()), request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route 404, wrong method 405) in our error shape. FastAPI's 400 for a
    body it cannot read (not UTF-8) is an invalid argument like any other bad body: 422."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if exc.status_code == 400:
        return error_response(InvalidArgument(f"the body could not be read as UTF-8 JSON ({exc.detail})"), path)
    code = code_name_for_http_status(exc.status_code)
    ctx = context.current()
    if ctx is not None:
        ctx.code = code
    content: dict = {"error": {"code": code, "message": str(exc.detail), "field": None}}
    if path in VLLM_ERROR_ROUTES:
        content = {"error": {"message": str(exc.detail), "type": HTTPStatus(exc.status_code).phrase, "param": None,
                             "code": exc.status_code}}
    body = json.dumps(content)
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Typed errors, validation errors and routing errors. Anything else is caught by the request
    middleware (it must be: Starlette answers bare exceptions outside the middleware stack)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
