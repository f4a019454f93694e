"""Request bodies: bounded before they are parsed, and parsed off the event loop when they are large.

FastAPI would `json.loads` and validate a body on the event loop, so one 30 MiB body held every other
request (of every tenant, on both transports) for over a second. Here a body is
1. bounded from its raw bytes: a /v1/logits body whose commas alone prove it holds more tokens than
   the queue ever admits is refused before any parse (`logits_token_floor`);
2. parsed and validated by pydantic (`model_validate_json`, no intermediate dict) inline when it is
   small, in a worker thread when it is over INLINE_BODY_BYTES.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .. import context
from ..config import ServerConfig
from ..core.validation import check_request_tokens
from ..errors import from_validation_errors

M = TypeVar("M", bound=BaseModel)

INLINE_BODY_BYTES = 64 * 1024  # parsing this much takes well under a millisecond
# Commas a valid /v1/logits body may hold outside its token lists: the top-level separators plus any
# inside its strings (model <= 256 chars, request_id <= 128, mode and format a few).
_OTHER_COMMAS = 512


COUNT_SLICE_BYTES = 1 << 20  # commas are counted a slice at a time, yielding to the loop in between


async def logits_token_floor(raw: bytes) -> int:
    """A lower bound on the tokens of any valid LogitsRequest with this body.

    A sequence of T >= 2 ids has T - 1 commas inside its list and at most 2 around it (after the list,
    after the object), so commas <= sum(T - 1) + 2 * S + _OTHER_COMMAS <= 2 * tokens + _OTHER_COMMAS.
    bytes.count runs at memory speed but holds the GIL, hence 1 MiB slices (well under a millisecond each)."""
    commas = 0
    for begin in range(0, len(raw), COUNT_SLICE_BYTES):
        commas += raw.count(b",", begin, begin + COUNT_SLICE_BYTES)
        await asyncio.sleep(0)
    return max(0, (commas - _OTHER_COMMAS) // 2)


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False)) from None


async def parse_body(
    request: Request, model: type[M], check: Callable[[bytes], Awaitable[None]] | None = None
) -> M:
    """The body as `model` (InvalidArgument naming the first bad field, as FastAPI's validation would).
    `check(raw)` runs first, on the raw bytes."""
    raw = await request.body()
    with context.timed("parse"):
        if check is not None:
            await check(raw)
        if len(raw) <= INLINE_BODY_BYTES:
            return _parse(model, raw)
        return await asyncio.to_thread(_parse, model, raw)


def logits_body_check(config: ServerConfig) -> Callable[[bytes], Awaitable[None]]:
    async def check(raw: bytes) -> None:
        if len(raw) > INLINE_BODY_BYTES:
            check_request_tokens(await logits_token_floor(raw), config, at_least=True)

    return check
