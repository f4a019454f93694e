"""The FastAPI app: a thin adapter from HTTP to the TeacherService (routes of docs/api.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import SimpleNamespace
from typing import TypeVar

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dualdistill.protocol.formats import BINARY_CONTENT_TYPE

from .. import context
from ..config import ServerConfig
from ..core import TeacherService
from ..core.payload import binary_payload, encodes_inline
from ..errors import Cancelled, InvalidArgument
from ..schemas import GenerateRequest, LogitsRequest
from .bodies import logits_body_check, parse_body
from .encode import generate_json, logits_json
from .errors import install_error_handlers
from .middleware import RequestMiddleware
from .openai_compat import routes as openai_compat
from .openapi import install_openapi
from .trl_compat import routes as trl_compat

T = TypeVar("T")


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its queued sequences are dropped)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise Cancelled("the client disconnected")
    finally:
        watcher.cancel()
        task.cancel()


DEADLINE_HEADER = "x-deadline-seconds"


def _endpoint_app(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """An endpoint `async (Request) -> Response` as a plain ASGI app, for RequestMiddleware's direct routes."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    return app


def _header_deadline(request: Request) -> float | None:
    """`x-deadline-seconds: S` (S > 0, finite): answer 504 after S seconds. For logits the body's
    deadline_seconds applies too, whichever is sooner."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise InvalidArgument(f"must be a number of seconds > 0, got {raw[:32]!r}", field=DEADLINE_HEADER)
    return value


def create_app(service: TeacherService, config: ServerConfig) -> FastAPI:
    """The HTTP transport of `service`. Metrics come from `service.metrics` (one registry per service)."""
    app = FastAPI(
        title="dualdistill teacher",
        description="Teacher next-token distributions (top-k or sampled) per sequence; see docs/api.md.",
        version="1",
    )
    app.state.service = service
    install_error_handlers(app)
    check_logits = logits_body_check(config)

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Every model is loaded and the server is not draining")
    async def readyz() -> Response:
        if service.ready:
            return JSONResponse({"status": "ready"})
        status = "draining" if service.draining else "loading"
        return JSONResponse({"status": status}, status_code=503, headers={"retry-after": "1"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    created = int(time.time())

    @app.get("/v1/models", summary="Served models: our facts (`models`) and the OpenAI list shape (`data`)")
    async def list_models() -> dict:
        return {
            "object": "list",
            "data": openai_compat.model_cards(service, created),
            "models": [info.to_dict() for info in service.list_models()],
        }

    @app.post(
        "/v1/logits",
        summary="Teacher distributions for every response position of each sequence",
    )
    async def logits(request: Request) -> Response:
        body = await parse_body(request, LogitsRequest, check_logits)
        request_id = context.resolve_request_id(body.request_id)
        timeout = _header_deadline(request)
        result = await _unless_disconnected(request, service.logits(body, request_id=request_id, timeout=timeout))
        # x-request-id: added by RequestMiddleware (the body's id when it is header-safe).
        encode = logits_json if body.format == "json" else partial(binary_payload, response_format=body.format)
        with context.timed("encode"):
            inline = encodes_inline(result, service.active_requests)
            content = encode(result) if inline else await asyncio.to_thread(encode, result)
        if body.format == "json":
            return Response(content, media_type="application/json")
        headers = {"x-dualdistill-model": result.model, "x-dualdistill-fingerprint": result.fingerprint}
        return Response(content, media_type=BINARY_CONTENT_TYPE, headers=headers)

    @app.post("/v1/generate", summary="Sampled completions for prompts (text, token ids or chat messages)")
    async def generate(request: Request) -> Response:
        body = await parse_body(request, GenerateRequest)
        request_id = context.resolve_request_id(body.request_id)
        timeout = _header_deadline(request)
        result = await _unless_disconnected(request, service.generate(body, request_id=request_id, timeout=timeout))
        return Response(generate_json(result), media_type="application/json")

    # The vLLM (OpenAI-compatible) and `trl vllm-serve` dialects, on the same service (docs/api.md).
    helpers = SimpleNamespace(
        resolve_request_id=context.resolve_request_id, header_deadline=_header_deadline,
        unless_disconnected=_unless_disconnected,
    )
    openai_compat.install(app, service, config, helpers)
    trl_compat.install(app, service, config, helpers)

    install_openapi(app, service)
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=config.max_body_bytes,
        metrics=service.metrics,
        api_keys=service.api_keys,
        limits=service.limits,
        route_paths=frozenset(getattr(route, "path", "") for route in app.routes),
        direct_routes={("POST", "/v1/logits"): _endpoint_app(logits)},
    )
    return app
