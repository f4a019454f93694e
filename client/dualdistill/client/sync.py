"""`TeacherClient`: the blocking client a training loop calls (thread-safe; share one per process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from dualdistill.client import operations as ops
from dualdistill.client.base import ClientBase
from dualdistill.client.handshake import check_tokenizer_against
from dualdistill.client.retry import call_with_retry
from dualdistill.client.types import Completion, ModelInfo
from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits

T = TypeVar("T")


class TeacherClient(ClientBase):
    """Blocking client of the teacher service, over gRPC or HTTP.

    url: "host:port" or "grpc://host:port" (gRPC), "grpcs://..." (gRPC + TLS), "http(s)://host:port" (HTTP),
        "openai+http(s)://host:port" (a stock vLLM OpenAI-compatible server: top-k logits at temperature 1,
        generation, and a weaker tokenizer handshake; see transport_openai.py).
    api_key: sent as `authorization: Bearer KEY` when the server requires keys.
    transport: "grpc" | "http"; None infers it from `url` (http(s):// -> HTTP, anything else -> gRPC).
    timeout: seconds per attempt (gRPC deadline; httpx connect/read/write timeout); per-call override.
    retries: RetryPolicy (default: 10 attempts, full-jitter backoff 0.5 s .. 30 s) on 429/502/503/504,
        refused connections and timeouts; never on validation errors. `stats` counts attempts.
    format: logits wire format, "binary" (default, compact), "binary-lossless" or "json".
    on_retry: called as on_retry(retry_number, error, delay_seconds) before each retry's sleep.
    """


    def _call(self, op: ops.Operation[T], timeout: float | None) -> T:
        seconds = self._timeout(timeout)
        return call_with_retry(
            lambda: self._transport.send(op, seconds), self.retries, self.stats, self.on_retry
        )

    def models(self, timeout: float | None = None) -> list[ModelInfo]:
        """The models this server serves."""
        return self._call(ops.list_models(), timeout)

    def model_info(self, name: str, timeout: float | None = None) -> ModelInfo:
        """One served model; TeacherServiceError NOT_FOUND (status 404) if it is not served."""
        return self._pick_model(self.models(timeout), name)

    def logits(
        self,
        model: str,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        params: LogitsParams | None = None,
        *,
        timeout: float | None = None,
        **overrides: Any,
    ) -> list[SequenceLogits]:
        """Teacher distributions p(. | x[:i]) for i in [starts[b], len(sequences[b])), one result per sequence.

        `params` (default `LogitsParams()`: top_k 20, temperature 1, mode "topk"), with any field
        overridden by keyword (`top_k=5`). mode "topk": the top_k ids per position; mode "sample":
        `samples` draws per position (seeded by (seed, sequence, start) only, so results are reproducible
        and cacheable). Idempotent: retried.
        """
        op, seconds = self._logits_op(model, sequences, starts, params, timeout, overrides)
        return self._call(op, seconds)

    def generate(
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
        """`n` completions per prompt (str, token ids, or chat messages [{"role", "content"}]), ordered by
        prompt then sample. Deterministic for a given seed, hence safe to retry."""
        op = ops.generate(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            n=n,
            seed=seed,
        )
        return self._call(op, timeout)

    def check_tokenizer(self, tokenizer: Any, model: str) -> ModelInfo:
        """Raise TokenizerMismatchError unless `tokenizer` is the served model's (see handshake.py)."""
        info = self.model_info(model)
        if self.transport == "openai":  # a vLLM server: the checks of handshake_openai.py
            return self._transport.check_tokenizer(tokenizer, info, self.timeout)
        return check_tokenizer_against(tokenizer, info)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
