"""The value types the model layer exchanges with the service core.

`ModelInfo` mirrors proto `ModelInfo` and one entry of GET /v1/models; `LogitsTask` is one sequence of
one logits request (already validated by the core); `GeneratedCompletion` is one sampled completion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dualdistill.protocol.params import LogitsParams

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs for the tokenizer handshake and for caching results."""

    name: str  # the served name (NAME in --model NAME=PATH)
    vocab_size: int  # logits dimension; every token id must be < vocab_size
    tokenizer_sha256: str  # dualdistill.protocol.tokenizer_hash.tokenizer_sha256 of the model's tokenizer
    max_seq_len: int  # min(model's max_position_embeddings, ServerConfig.max_seq_len)
    max_top_k: int  # min(ServerConfig.max_top_k, vocab_size)
    eos_token_id: int | None  # the tokenizer's end-of-sequence id (config's when the tokenizer has none)
    bos_token_id: int | None  # the tokenizer's beginning-of-sequence id (same fallback)
    dtype: str  # serving dtype: "float32" | "bfloat16" | "float16"
    fingerprint: str  # 16 hex chars of sha256(config, weights, dtype, engine); results are cacheable under it
    engine: str = "hf"  # what computes it: "hf" (our transformers forwards) | "vllm" (vLLM's engine)

    def to_dict(self) -> dict:
        """The JSON object of GET /v1/models (same keys as proto ModelInfo)."""
        return asdict(self)


@dataclass(frozen=True)
class LogitsTask:
    """One sequence of one logits request; the core has validated every field against ModelInfo."""

    token_ids: np.ndarray  # (T,) int64, 0 <= id < vocab_size, 2 <= T <= max_seq_len
    start: int  # first returned position, 1 <= start < T
    params: LogitsParams  # top_k <= max_top_k, samples <= max_samples (checked by the core)
    token_ranks: bool = False  # also compute the actual token's rank per row (the OpenAI dialect needs it)

    @property
    def num_rows(self) -> int:
        return len(self.token_ids) - self.start


@dataclass
class GeneratedCompletion:
    """One completion; the logits request that scores it is prompt_token_ids + token_ids, start = len(prompt)."""

    prompt_index: int  # index of the prompt in the request
    prompt_token_ids: list[int]  # the prompt as the model saw it (chat template applied)
    token_ids: list[int]  # generated ids only; ends with the stop token when finish_reason == "stop"
    text: str  # token_ids decoded without special tokens
    finish_reason: str  # "stop" (a stop token was generated) | "length" (max_new_tokens or max_seq_len)
