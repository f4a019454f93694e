"""The routes of vLLM's OpenAI-compatible dialect: POST /v1/completions, GET /health.

A few lines in http/app.py install them; the work is in completions.py, on the same TeacherService.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from ...config import ServerConfig
from ...core import TeacherService
from .completions import create_completion, resolve_model
from .schemas import CompletionRequest
from .tokens import TokenTexts


def model_cards(service: TeacherService, created: int) -> list[dict]:
    """GET /v1/models `data`: OpenAI model objects (vLLM's fields), one per served model."""
    return [
        {"id": info.name, "object": "model", "created": created, "owned_by": "dualdistill", "root": None,
         "parent": None, "max_model_len": info.max_seq_len, "permission": []}
        for info in service.list_models()
    ]


def health_response(service: TeacherService) -> Response:
    """200 once every model is loaded (vLLM's /health; TRL's client waits on /health/ for it), else 503."""
    if service.ready:
        return JSONResponse({"status": "ok"})
    status = "draining" if service.draining else "loading"
    return JSONResponse({"status": status}, status_code=503, headers={"retry-after": "1"})


def install(app: FastAPI, service: TeacherService, config: ServerConfig, helpers) -> None:
    """Add the dialect's routes. `helpers`: the app's request-id / deadline / disconnect helpers."""
    texts: dict[str, TokenTexts] = {}

    def texts_of(name: str) -> TokenTexts:
        if name not in texts:
            texts[name] = TokenTexts(service.served_model(name).tokenizer)
        return texts[name]

    @app.get("/health", summary="vLLM's health probe: 200 when ready")
    async def health() -> Response:
        return health_response(service)

    @app.post("/v1/completions", summary="vLLM's OpenAI-compatible completions (prompt_logprobs, echo + logprobs)")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        request_id = helpers.resolve_request_id("")
        timeout = helpers.header_deadline(request)
        name = resolve_model(service, body.model)
        work = create_completion(
            service, await asyncio.to_thread(texts_of, name), body, request_id=request_id, timeout=timeout,
            apply_temperature_default=config.compat_apply_temperature,
        )
        answer = await helpers.unless_disconnected(request, work)
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")
