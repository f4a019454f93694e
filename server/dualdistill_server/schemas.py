"""Request models shared by both transports (HTTP JSON bodies and gRPC messages both become these).

Field names and defaults equal protos/dualdistill/v1/teacher.proto. Static bounds live here; the bounds
that depend on the served model and the server's settings (vocab size, max_seq_len, max_top_k,
max_samples) are checked by the core (`core/validation.py`), which knows the model. Unknown fields are
refused (`extra="forbid"`): a misspelt `temprature` must not silently fall back to a default.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from dualdistill.protocol.formats import LOGITS_FORMATS
from dualdistill.protocol.params import (
    LOGITS_MODES,
    MIN_TEMPERATURE,
    MIN_TEMPERATURE_FLOAT32,
    UINT64_MAX,
    LogitsParams,
)

INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger values round to inf on the float32 wire
MAX_N = 64  # completions per prompt of one generate request
FLOAT32_TINY = 1.5e-45  # from here on a positive value stays > 0 in float32 (smallest subnormal 1.4e-45)


def _not_bool(value: object) -> object:
    # Pydantic's lax mode reads true as 1; a boolean where a number belongs is a client bug, not a 1.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
# Strict (ints only, no "5", no true): fast for long sequences, and ids are always JSON/proto ints.
TokenId = Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)]


def _whole_floats_as_ints(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """JSON Schema's "integer" includes whole floats (`2.0` is the integer 2), so a client generated from
    the schema may send them. The strict list is tried first (validated in Rust, no cost per id); only a
    list that fails it is converted here, whole floats to ints, and tried once more."""
    try:
        return handler(value)
    except ValidationError:
        if not isinstance(value, list):
            raise
        return handler([int(item) if type(item) is float and item.is_integer() else item for item in value])


TokenIds = Annotated[list[TokenId], WrapValidator(_whole_floats_as_ints)]



def _as_float32(value: float, name: str) -> float:
    """Round to float32, the wire type, so HTTP and gRPC requests compute (and cache) identically."""
    with np.errstate(over="ignore"):  # out of range -> inf, refused below (numpy would print a warning)
        rounded = float(np.float32(value))
    if not np.isfinite(rounded):
        raise ValueError(f"{name} must be finite in float32, got {value!r}")
    return rounded


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SequenceIn(_Strict):
    """One sequence: distributions are returned for positions [start, len(token_ids))."""

    token_ids: TokenIds = Field(min_length=2, description="Token ids (prompt + response), 2..max_seq_len.")
    start: Int = Field(ge=1, le=INT32_MAX, description="First position returned: 1 <= start < len(token_ids).")

    @field_validator("start")
    @classmethod
    def _start_inside(cls, start: int, info: ValidationInfo) -> int:
        token_ids = info.data.get("token_ids")
        if token_ids is not None and start >= len(token_ids):
            raise ValueError(f"start must be < len(token_ids) = {len(token_ids)}, got {start}")
        return start


class LogitsRequest(_Strict):
    model: str = Field(min_length=1, max_length=256, description="Name of a served model (GET /v1/models).")
    sequences: list[SequenceIn] = Field(min_length=1, description="Sequences to score.")
    top_k: Int = Field(20, ge=1, le=INT32_MAX, description="Entries per row in topk mode; <= max_top_k.")
    temperature: Float = Field(
        1.0, ge=MIN_TEMPERATURE_FLOAT32, le=FLOAT32_MAX,
        description=f"p = softmax(logits / temperature); finite, >= {MIN_TEMPERATURE}.",
    )
    mode: Literal[LOGITS_MODES] = Field("topk", description="'topk' rows or 'sample' (sampled ids + counts).")
    samples: Int = Field(64, ge=1, le=INT32_MAX, description="Draws per position in sample mode; <= max_samples.")
    seed: Int = Field(0, ge=0, le=UINT64_MAX, description="Sample mode: random stream seed (with the sequence).")
    format: Literal[LOGITS_FORMATS] = Field("json", description="Response encoding.")
    request_id: str = Field("", max_length=128, description="Echoed back (else the x-request-id header's).")
    deadline_seconds: Annotated[Float, Field(gt=0, le=FLOAT32_MAX)] | None = Field(
        None, description="Give up (504) after this many seconds."
    )

    @field_validator("temperature")
    @classmethod
    def _temperature_float32(cls, value: float) -> float:
        rounded = _as_float32(value, "temperature")
        if rounded < MIN_TEMPERATURE_FLOAT32:
            raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} (and finite), got {value!r}")
        return rounded

    @property
    def num_tokens(self) -> int:
        return sum(len(sequence.token_ids) for sequence in self.sequences)

    @property
    def params(self) -> LogitsParams:
        """The teacher parameters of this request, as every layer below the transports takes them."""
        return LogitsParams(
            top_k=self.top_k, temperature=self.temperature, mode=self.mode, samples=self.samples, seed=self.seed
        )


class ChatMessageIn(_Strict):
    role: str = Field(min_length=1, max_length=64)
    content: str


class PromptIn(_Strict):
    """Exactly one of text, token_ids or messages (empty lists count as absent, as in protobuf)."""

    text: str | None = Field(None, min_length=1)
    token_ids: TokenIds | None = None
    messages: list[ChatMessageIn] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptIn:
        given = [name for name in ("text", "token_ids", "messages") if getattr(self, name) not in (None, [])]
        if len(given) != 1:
            raise ValueError(f"exactly one of text, token_ids or messages must be set, got {given or 'none'}")
        return self


class GenerateRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    prompts: list[PromptIn] = Field(min_length=1)
    max_new_tokens: Int = Field(64, ge=1, le=INT32_MAX, description="Tokens to generate; prompt + this <= max_seq_len.")
    temperature: Float = Field(
        1.0, ge=0, le=FLOAT32_MAX, description=f"0 = greedy; otherwise >= {MIN_TEMPERATURE}."
    )
    top_p: Float = Field(1.0, ge=FLOAT32_TINY, le=1.0, description="Nucleus sampling mass (> 0 in float32).")
    n: Int = Field(1, ge=1, le=MAX_N, description="Completions per prompt.")
    seed: Int = Field(0, ge=0, le=UINT64_MAX)
    request_id: str = Field("", max_length=128)

    @field_validator("temperature", "top_p")
    @classmethod
    def _float32(cls, value: float, info: ValidationInfo) -> float:
        name = info.field_name or "value"
        rounded = _as_float32(value, name)
        if name == "temperature" and 0 < rounded < MIN_TEMPERATURE_FLOAT32:
            raise ValueError(f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {value!r}")
        if name == "top_p" and rounded <= 0:
            raise ValueError(f"top_p must be > 0 in float32, got {value!r}")
        return rounded
