"""The vLLM- and TRL-dialect operations of /openapi.json (POST /v1/completions, POST /get_sequence_logprobs/):
vLLM's error body and statuses (400 where our own API says 422), and the rules their handlers enforce,
where JSON Schema can say them.

Rules that JSON Schema cannot say (they relate two values, or a text to its token count) are listed in
docs/api.md; the schema-conformance fuzz checks them with its own predicate
(tests/reliability/schema_constraints.py).
"""

from __future__ import annotations

from typing import Any

from ..core import TeacherService
from ..schemas import FLOAT32_TINY, MAX_N
from .openai_compat.schemas import NO_OP_VALUES

VLLM_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string", "description": "vLLM's error type, e.g. BadRequestError"},
                "param": {"type": ["string", "null"], "description": "The bad parameter, when known"},
                "code": {"type": "integer", "description": "The HTTP status"},
            },
        }
    },
}
_VLLM_STATUS_TEXT = {
    400: "Invalid request (vLLM's BadRequestError); `error.param` names the parameter when known",
    401: "Missing or wrong API key (`WWW-Authenticate: Bearer`)",
    404: "Unknown model",
    413: "Body over max_body_bytes",
    429: "Queue full or the tenant over its limits; retry after `Retry-After` seconds",
    500: "Unexpected server error; the message carries the request id only",
    503: "Models loading or the server draining; retry after `Retry-After` seconds",
    504: "The request's deadline (`x-deadline-seconds`) passed",
}
COMPAT_OPERATIONS = {"/v1/completions": "CompletionRequest", "/get_sequence_logprobs/": "SequenceLogprobsRequest"}


def vllm_error_responses(keyed: bool) -> dict:
    statuses = (400, 401, 404, 413, 429, 500, 503, 504) if keyed else (400, 404, 413, 429, 500, 503, 504)
    ref = {"$ref": "#/components/schemas/VllmError"}
    return {str(status): {"description": _VLLM_STATUS_TEXT[status], "content": {"application/json": {"schema": ref}}}
            for status in statuses}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _logprobs_count(max_top_k: int, vocab_size: int) -> dict:
    """0..max_top_k, or -1 (the whole vocabulary) when the vocabulary fits under max_top_k."""
    count: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": max_top_k}
    return {"anyOf": [count, {"const": -1}]} if vocab_size <= max_top_k else count


def _completion_request(schema: dict, names: list[str], max_id: int, max_seq_len: int, max_top_k: int,
                        vocab_size: int, max_tokens: int, apply_by_default: bool) -> None:
    properties = schema["properties"]
    ids = {"type": "array", "minItems": 1, "maxItems": max_seq_len,
           "items": {"type": "integer", "minimum": 0, "maximum": max_id}}
    properties["prompt"] = {"anyOf": [
        ids,
        {"type": "array", "minItems": 1, "items": ids},
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    ], "description": "Token ids, a batch of token-id lists, a text, or a batch of texts (none empty)."}
    properties["model"] = _nullable({"type": "string", "enum": names})
    properties["n"] = {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1}
    properties["temperature"] = _nullable({"type": "number", "minimum": 0, "maximum": 2})
    properties["top_p"] = _nullable({"type": "number", "minimum": FLOAT32_TINY, "maximum": 1})
    for name in ("logprobs", "prompt_logprobs"):
        properties[name] = _nullable(_logprobs_count(max_top_k, vocab_size))
    properties["max_tokens"] = _nullable({"type": "integer", "minimum": 0, "maximum": max_tokens})
    # max_tokens 0 (score the prompt, generate nothing) only with echo.
    generating = _nullable({"type": "integer", "minimum": 1, "maximum": max_tokens})
    echo_rule = {"if": {"properties": {"echo": {"const": True}}, "required": ["echo"]},
                 "else": {"properties": {"max_tokens": generating}}}
    # Logprobs at the request's temperature need one that is not greedy (vLLM: below 1e-5 is greedy).
    apply = {"properties": {"apply_temperature_to_logprobs": {"const": not apply_by_default}},
             "required": ["apply_temperature_to_logprobs"]}
    applied = {"properties": {"temperature": _nullable({"type": "number", "minimum": 1e-5, "maximum": 2})}}
    temperature_rule = {"if": {"not": apply} if apply_by_default else apply, "then": applied}
    schema["allOf"] = [echo_rule, temperature_rule]
    # vLLM fields this server does not implement: only their no-op values.
    for name, no_op in NO_OP_VALUES.items():
        properties[name] = {"enum": _distinct(no_op), "description": "Not implemented here: its no-op value only."}


def _distinct(values: tuple) -> list:
    """`values` without JSON duplicates (0 and 0.0 are one JSON number; false is not 0)."""
    def same(a: Any, b: Any) -> bool:
        return a == b and isinstance(a, bool) == isinstance(b, bool)

    return [value for i, value in enumerate(values) if not any(same(value, other) for other in values[:i])]


def _sequence_logprobs_request(schema: dict, names: list[str], max_id: int, max_seq_len: int,
                               max_top_k: int) -> None:
    properties = schema["properties"]
    properties["sequences"]["items"] = {"type": "array", "maxItems": max_seq_len,
                                        "items": {"type": "integer", "minimum": 0, "maximum": max_id}}
    properties["prompt_lengths"]["items"] = {"type": "integer", "minimum": 0, "maximum": max_seq_len}
    properties["top_logprobs"].update(minimum=0, maximum=max_top_k)
    properties["temperature"].update(exclusiveMinimum=0)
    properties["response_format"] = {"type": "string", "enum": ["json", "binary"], "default": "json"}
    properties["model"] = _nullable({"type": "string", "enum": names})


def describe_compat(schemas: dict, service: TeacherService) -> None:
    """Tighten the dialects' request schemas to what their handlers accept, for the served models."""
    schemas["VllmError"] = VLLM_ERROR_SCHEMA
    if "CompletionRequest" in schemas:
        schemas["CompletionRequest"]["required"] = ["prompt"]  # vLLM's "Either prompt or prompt_embeds ..."
    infos = service.list_models()
    if not infos:
        return
    names = sorted(info.name for info in infos)
    max_id = min(info.vocab_size for info in infos) - 1
    max_seq_len = min(info.max_seq_len for info in infos)
    max_top_k = min(info.max_top_k for info in infos)
    vocab_size = max(info.vocab_size for info in infos)
    if "CompletionRequest" in schemas:
        _completion_request(schemas["CompletionRequest"], names, max_id, max_seq_len, max_top_k, vocab_size,
                            service.config.max_generate_tokens, service.config.compat_apply_temperature)
    if "SequenceLogprobsRequest" in schemas:
        _sequence_logprobs_request(schemas["SequenceLogprobsRequest"], names, max_id, max_seq_len, max_top_k)
