"""Transport to a stock vLLM OpenAI-compatible server (`openai+http://host:port`), sync and asyncio.

The translation of each operation lives in `openai_steps.py` (sans-IO); these classes only run its calls
with httpx and turn failures into `TeacherServiceError`s, so retries, timeouts and the client API are the
ones of the other transports. `check_tokenizer` is the handshake against what vLLM exposes
(`handshake_openai.py`).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx

from dualdistill.client import errors
from dualdistill.client.handshake_openai import Answers, handshake_steps
from dualdistill.client.openai_steps import Call, Steps, error_of, steps_for
from dualdistill.client.operations import Operation
from dualdistill.client.types import ModelInfo

T = TypeVar("T")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _kwargs(call: Call, timeout: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"method": call.method, "url": call.path, "timeout": httpx.Timeout(timeout)}
    if call.body is not None:
        kwargs["content"] = json.dumps(call.body, separators=(",", ":")).encode()
        kwargs["headers"] = {"content-type": "application/json"}
    return kwargs


def _answer(call: Call, response: httpx.Response) -> Any:
    try:
        content = json.loads(response.content) if response.content else {}
    except ValueError:
        content = None
    if response.status_code >= 400:
        if response.status_code in call.allow_status and isinstance(content, dict):
            return {"status": response.status_code, **content}
        retry_after = errors.parse_retry_after(response.headers.get("retry-after"))
        raise error_of(response.status_code, content, response.text, retry_after)
    if content is None:
        raise errors.TeacherServiceError("INTERNAL", f"{call.path} answered with a body that is not JSON")
    return content


def _failure(base_url: str, timeout: float, exc: httpx.TransportError) -> errors.TeacherServiceError:
    if isinstance(exc, httpx.TimeoutException):
        return errors.timed_out(base_url, timeout, exc)
    return errors.unreachable(base_url, exc)


class OpenAITransport:
    """Synchronous transport; `base_url` is "http(s)://host:port" of the vLLM server."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, headers=_headers(api_key))
        self._limits: dict[str, tuple[int, int]] = {}  # model -> (vocab_size, max_logprobs), probed once

    def _run(self, steps: Steps, timeout: float) -> Any:
        try:
            call = next(steps)
            while True:
                try:
                    response = self._client.request(**_kwargs(call, timeout))
                except httpx.TransportError as exc:
                    raise _failure(self.base_url, timeout, exc) from exc
                call = steps.send(_answer(call, response))
        except StopIteration as done:
            return done.value

    def send(self, op: Operation[T], timeout: float) -> T:
        return self._run(steps_for(op.rpc, op.body, self._limits), timeout)

    def check_tokenizer(self, tokenizer: Any, info: ModelInfo, timeout: float) -> ModelInfo:
        return self._run(handshake_steps(tokenizer, info, Answers()), timeout)

    def close(self) -> None:
        self._client.close()


class AsyncOpenAITransport:
    """asyncio twin of `OpenAITransport` (the same steps)."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key))
        self._limits: dict[str, tuple[int, int]] = {}

    async def _run(self, steps: Steps, timeout: float) -> Any:
        try:
            call = next(steps)
            while True:
                try:
                    response = await self._client.request(**_kwargs(call, timeout))
                except httpx.TransportError as exc:
                    raise _failure(self.base_url, timeout, exc) from exc
                call = steps.send(_answer(call, response))
        except StopIteration as done:
            return done.value

    async def send(self, op: Operation[T], timeout: float) -> T:
        return await self._run(steps_for(op.rpc, op.body, self._limits), timeout)

    async def check_tokenizer(self, tokenizer: Any, info: ModelInfo, timeout: float) -> ModelInfo:
        return await self._run(handshake_steps(tokenizer, info, Answers()), timeout)

    async def close(self) -> None:
        await self._client.aclose()
