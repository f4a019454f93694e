"""Schemathesis hooks of the schema-conformance fuzz: the rules /openapi.json cannot state, as a check.

Every limit JSON Schema can say is in the served document (model names, id ranges, top_k, sequence
lengths, exactly one prompt field, vLLM's fields that are not implemented ...). What it cannot say
relates two values, or a text to its token count (docs/api.md, "Rules the schema cannot state"):

| operation | rule | refused with |
|---|---|---|
| POST /v1/logits | start < len(token_ids) | 422 `sequences[i].start` |
| POST /v1/logits | all sequences hold <= max_queue_tokens tokens | 422 `sequences` |
| POST /v1/generate | prompts x n x max_new_tokens <= max_generate_tokens | 422 `max_new_tokens` |
| POST /v1/generate | a text or chat prompt encodes to 1 .. max_seq_len - 1 tokens; the chat template accepts the turns | 422 `prompts[i].text` / `prompts[i].messages` |
| POST /v1/completions | prompts x n x max_tokens <= max_generate_tokens | 400 `max_new_tokens` |
| POST /v1/completions | a prompt encodes to 1 .. max_seq_len - 1 tokens (when generating) | 400 `prompts[i]...` |
| POST /v1/completions | scoring a prompt (prompt_logprobs, or echo with logprobs) needs 2+ tokens | 400 `sequences[i].token_ids` |
| POST /get_sequence_logprobs/ | len(prompt_lengths) == len(sequences), prompt_lengths[i] <= len(sequences[i]) | 400 `prompt_lengths...` |
| any | the body is at most max_body_bytes | 413 |

The built-in `positive_data_acceptance` check ("a schema-valid request is accepted") is replaced by
`documented_constraints`, which is the same check except that a schema-valid request breaking one of
these rules must be refused with the status and field above. Every other built-in check runs as is.

The server's limits come from the SCHEMA_FUZZ_LIMITS environment variable (JSON), set by the test.
"""

from __future__ import annotations

import json
import os

import schemathesis

# Statuses the built-in check accepts for schema-valid data besides 2xx/3xx (5xx is not_a_server_error's).
_ACCEPTED = {401, 403, 404, 409, 429}


def _limits() -> dict:
    return json.loads(os.environ.get("SCHEMA_FUZZ_LIMITS", "{}"))


def _body_bytes(case) -> int:
    return len(json.dumps(case.body, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _logits_rules(body: dict, limits: dict) -> list[tuple[int, str]]:
    rules = []
    sequences = body.get("sequences", [])
    for i, sequence in enumerate(sequences):
        if sequence.get("start", 1) >= len(sequence.get("token_ids", [])):
            rules.append((422, f"sequences[{i}].start"))
    if sum(len(s.get("token_ids", [])) for s in sequences) > limits["max_queue_tokens"]:
        rules.append((422, "sequences"))
    return rules


def _prompt_fields(prompts: list) -> list[tuple[int, str]]:
    """Text and chat prompts: their token count is the tokenizer's (and the template's) to say."""
    fields = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, dict):
            for name in ("text", "messages"):  # token-id prompts: their length is in the schema
                fields.append((422, f"prompts[{i}].{name}"))
    return fields


def _generate_rules(body: dict, limits: dict) -> list[tuple[int, str]]:
    prompts = body.get("prompts", [])
    rules = _prompt_fields(prompts)
    if len(prompts) * body.get("n", 1) * body.get("max_new_tokens", 64) > limits["max_generate_tokens"]:
        rules.append((422, "max_new_tokens"))
    return rules


def _completion_prompts(prompt) -> list:
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int | float)):
        return [prompt]
    return list(prompt or [])


def _completion_rules(body: dict, limits: dict) -> list[tuple[int, str]]:
    prompts = _completion_prompts(body.get("prompt"))
    max_tokens = body.get("max_tokens")
    max_tokens = 16 if max_tokens is None else max_tokens
    rules = [(400, f"prompts[{i}]") for i in range(len(prompts))]  # token counts of texts, length + max_tokens
    rules += [(400, f"prompt[{i}]") for i in range(len(prompts))]
    rules += [(400, f"sequences[{i}].token_ids") for i in range(len(prompts))]  # a 1-token prompt to score
    if len(prompts) * body.get("n", 1) * max_tokens > limits["max_generate_tokens"]:
        rules.append((400, "max_new_tokens"))
    if any(len(p) > limits["max_seq_len"] for p in prompts if isinstance(p, list)):
        rules.append((400, "prompts"))
    return rules


def _sequence_logprobs_rules(body: dict, limits: dict) -> list[tuple[int, str]]:
    sequences, lengths = body.get("sequences", []), body.get("prompt_lengths", [])
    rules = []
    if len(sequences) != len(lengths):
        rules.append((400, "prompt_lengths"))
    for i, (sequence, length) in enumerate(zip(sequences, lengths, strict=False)):
        if length > len(sequence):
            rules.append((400, f"prompt_lengths[{i}]"))
    if sum(len(s) for s in sequences) > limits["max_queue_tokens"]:
        rules.append((400, "sequences"))
    return rules


_RULES = {
    "POST /v1/logits": _logits_rules,
    "POST /v1/generate": _generate_rules,
    "POST /v1/completions": _completion_rules,
    "POST /get_sequence_logprobs/": _sequence_logprobs_rules,
}


def _refused_field(response) -> str | None:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error.get("field", error.get("param"))


@schemathesis.check
def documented_constraints(ctx, response, case) -> None:
    """positive_data_acceptance, less the refusals docs/api.md lists as rules the schema cannot state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in _ACCEPTED or status >= 500:
        return None
    limits = _limits()
    allowed: list[tuple[int, str | None]] = []
    if isinstance(case.body, dict) and _body_bytes(case) > limits["max_body_bytes"] - 1024:
        allowed.append((413, None))  # serializations differ a little: a body near the bound may be over it
    rule = _RULES.get(case.operation.label)
    if rule is not None and isinstance(case.body, dict):
        allowed += rule(case.body, limits)
    field = _refused_field(response)
    for want_status, want_field in allowed:
        if status == want_status and (want_field is None or field == want_field or
                                      (field or "").startswith(want_field + ".")):
            return None
    raise AssertionError(
        f"a schema-valid request was refused with {status} (field {field!r}), and it breaks none of the "
        f"rules the schema cannot state (allowed here: {allowed}): {response.text[:500]}"
    )


# A deadline the case sets itself is the contract's 504 when it passes (tests/server/test_service_http.py::
# test_deadline_seconds_gives_504), not a server error; generated deadlines are lifted to DEADLINE_FLOOR_S before
# the call (every phase), so that not_a_server_error judges the server, not the deadline the fuzzer chose.
DEADLINE_FLOOR_S = 60.0


@schemathesis.hook
def before_call(ctx, case, kwargs) -> None:
    body = case.body
    if isinstance(body, dict):
        deadline = body.get("deadline_seconds")
        if isinstance(deadline, int | float) and not isinstance(deadline, bool) and 0 < deadline < DEADLINE_FLOOR_S:
            body["deadline_seconds"] = DEADLINE_FLOOR_S
