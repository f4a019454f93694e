"""The client's result types for `models()` and `generate()` (logits come back as `SequenceLogits`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """A served model, with the facts the tokenizer handshake and request sizing need."""

    name: str
    vocab_size: int  # size of the next-token distribution (logits dimension)
    tokenizer_sha256: str  # `dualdistill.protocol.tokenizer_hash.tokenizer_sha256` of the served tokenizer
    max_seq_len: int  # longest sequence the server accepts, in tokens
    max_top_k: int  # largest top_k it accepts
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    dtype: str = "float32"
    fingerprint: str = ""  # hash of config + weights + dtype + engine: results are cacheable under it
    engine: str = ""  # what computes it on the server: "hf" | "vllm" ("" from a server that does not say)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """From the JSON of GET /v1/models (or a gRPC ModelInfo converted to a dict); extra keys ignored."""
        return cls(
            name=str(data["name"]),
            vocab_size=int(data["vocab_size"]),
            tokenizer_sha256=str(data.get("tokenizer_sha256", "")),
            max_seq_len=int(data.get("max_seq_len", 0)),
            max_top_k=int(data.get("max_top_k", 0)),
            eos_token_id=_optional_int(data.get("eos_token_id")),
            bos_token_id=_optional_int(data.get("bos_token_id")),
            dtype=str(data.get("dtype", "")),
            fingerprint=str(data.get("fingerprint", "")),
            engine=str(data.get("engine", "")),
        )


@dataclass(frozen=True)
class Completion:
    """One sampled completion. Its logits request is `prompt_token_ids + token_ids` from
    `start = len(prompt_token_ids)` (see `logits_inputs`)."""

    prompt_index: int  # which prompt of the request it continues
    prompt_token_ids: list[int] = field(
        repr=False
    )  # the prompt as the server tokenized it (chat template applied)
    token_ids: list[int]  # the generated tokens only
    text: str  # the generated tokens decoded
    finish_reason: str  # "stop" (end-of-sequence token) | "length" (max_new_tokens reached)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        return cls(
            prompt_index=int(data.get("prompt_index", 0)),
            prompt_token_ids=[int(t) for t in data.get("prompt_token_ids", [])],
            token_ids=[int(t) for t in data.get("token_ids", [])],
            text=str(data.get("text", "")),
            finish_reason=str(data.get("finish_reason", "")),
        )

    def logits_inputs(self) -> tuple[list[int], int]:
        """(sequence, start) for `TeacherClient.logits`: the teacher's view of this completion."""
        return self.prompt_token_ids + self.token_ids, len(self.prompt_token_ids)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
