"""`AsyncTeacherClient`: the asyncio twin of `TeacherClient` (same arguments, methods are coroutines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from dualdistill.client import operations as ops
from dualdistill.client.base import ClientBase
from dualdistill.client.handshake import check_tokenizer_against
from dualdistill.client.retry import acall_with_retry
from dualdistill.client.types import Completion, ModelInfo
from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits

T = TypeVar("T")


class AsyncTeacherClient(ClientBase):
    """asyncio client of the teacher service; see `TeacherClient` for every argument.

    Use one per event loop (`async with AsyncTeacherClient(url) as client:`); many requests may be in
    flight at once (asyncio.gather), and the server batches them together.
    """

    asynchronous = True

    async def _call(self, op: ops.Operation[T], timeout: float | None) -> T:
        seconds = self._timeout(timeout)
        return await acall_with_retry(
            lambda: self._transport.send(op, seconds), self.retries, self.stats, self.on_retry
        )

    async def models(self, timeout: float | None = None) -> list[ModelInfo]:
        """The models this server serves."""
        return await self._call(ops.list_models(), timeout)

    async def model_info(self, name: str, timeout: float | None = None) -> ModelInfo:
        """One served model; TeacherServiceError NOT_FOUND (status 404) if it is not served."""
        return self._pick_model(await self.models(timeout), name)

    async def logits(
        self,
        model: str,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        params: LogitsParams | None = None,
        *,
        timeout: float | None = None,
        **overrides: Any,
    ) -> list[SequenceLogits]:
        """See `TeacherClient.logits`."""
        op, seconds = self._logits_op(model, sequences, starts, params, timeout, overrides)
        return await self._call(op, seconds)

    async def generate(
        self,
        model: str,
        prompts: Sequence[ops.Prompt],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int = 0,
        timeout: float | None = None,
    ) -> list[Completion]:
        """See `TeacherClient.generate`."""
        op = ops.generate(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            n=n,
            seed=seed,
        )
        return await self._call(op, timeout)

    async def check_tokenizer(self, tokenizer: Any, model: str) -> ModelInfo:
        """See `TeacherClient.check_tokenizer`."""
        info = await self.model_info(model)
        if self.transport == "openai":  # a vLLM server: the checks of handshake_openai.py
            return await self._transport.check_tokenizer(tokenizer, info, self.timeout)
        return check_tokenizer_against(tokenizer, info)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncTeacherClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
