"""Which HTTP dialect a route belongs to: our own API, vLLM's OpenAI-compatible API, or `trl vllm-serve`'s.

The error body (http/errors.py) and the per-dialect request counter (metrics.py) read this one table, so a
route added to a dialect is mapped and counted the same way everywhere.
"""

from __future__ import annotations

DUALDISTILL = "dualdistill"
OPENAI = "openai"  # vLLM's OpenAI-compatible server (lm-eval local-completions, the openai SDK, TRL async)
TRL = "trl"  # `trl vllm-serve` (TRL's VLLMClient.get_sequence_logprobs)

_DIALECT_OF_ROUTE = {
    "/v1/logits": DUALDISTILL,
    "/v1/generate": DUALDISTILL,
    "/v1/completions": OPENAI,
    "/health": OPENAI,
    "/health/": TRL,
    "/get_sequence_logprobs/": TRL,
}
# Routes outside /v1/ that still need a key and hold a tenant slot (the data routes of other dialects).
EXTRA_DATA_ROUTES = frozenset({"/get_sequence_logprobs/"})
# Routes whose errors use vLLM's body {"error": {"message", "type", "param", "code"}} and its statuses.
VLLM_ERROR_ROUTES = frozenset({"/v1/completions", "/get_sequence_logprobs/"})


def dialect_of(route: str) -> str | None:
    """The dialect of a route path, or None for routes every dialect shares (probes, metrics, models)."""
    return _DIALECT_OF_ROUTE.get(route)
