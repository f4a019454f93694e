"""The routes of the `trl vllm-serve` dialect: POST /get_sequence_logprobs/, GET /health/."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from ...config import ServerConfig
from ...core import TeacherService
from ..openai_compat.routes import health_response
from .sequence_logprobs import SequenceLogprobsRequest, sequence_logprobs


def install(app: FastAPI, service: TeacherService, config: ServerConfig, helpers) -> None:
    @app.get("/health/", summary="TRL's health probe (VLLMClient.check_server): 200 when ready")
    async def health() -> Response:
        return health_response(service)

    @app.post("/get_sequence_logprobs/", summary="`trl vllm-serve`'s teacher logprobs of given sequences")
    async def get_sequence_logprobs(body: SequenceLogprobsRequest, request: Request) -> Response:
        work = sequence_logprobs(
            service, body, request_id=helpers.resolve_request_id(""), timeout=helpers.header_deadline(request),
            apply_temperature=config.compat_apply_temperature,
        )
        content = await helpers.unless_disconnected(request, work)
        return Response(content, media_type="application/json")
