"""Our operations (models, logits, generate) spelled as calls to a stock vLLM OpenAI-compatible server.

Sans-IO: each operation is a generator that yields `Call`s (method, path, JSON body) and receives each
call's decoded JSON answer, then returns the operation's result; `transport_openai.py` drives it with a
sync or an async HTTP client. So both clients run exactly the same translation.

    ListModels -> GET /v1/models, and per model two refused-by-validation probes of /v1/completions whose
                  400 messages name vLLM's vocab size and --max-logprobs cap (nothing is computed for them)
    GetLogits  -> POST /v1/completions {prompt: [ids...], prompt_logprobs: top_k, max_tokens: 1}; position
                  i's entry gives log p(x[i]) (token_logprobs), its rank, and ranks 1..k (the top-k row)
    Generate   -> POST /tokenize for chat and text prompts (vLLM's chat template and tokenizer), then
                  POST /v1/completions {prompt: [ids...], n, max_tokens, temperature, top_p, seed,
                  return_token_ids: true}

What vLLM cannot do is refused before any call, with what to do instead: mode "sample" (vLLM has no
sampled rows), a temperature other than 1 (vLLM reports prompt logprobs at temperature 1 whatever the
request says), and top_k over the server's cap (vLLM's 400 is turned into that advice).
The tail of a row is computed here, log(1 - sum of the row's probabilities), from vLLM's float32
logprobs: unlike the dualdistill server's logsumexp over the rest of the vocabulary, it loses precision
when the row holds nearly all the mass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualdistill.client.errors import TeacherServiceError
from dualdistill.client.types import Completion, ModelInfo
from dualdistill.protocol.results import SequenceLogits

CLAMPED = -9999.0  # vLLM's JSON stand-in for -inf
PROBE_K = 2**31 - 1  # a prompt_logprobs no server allows: its 400 names the cap
_CAP_RE = re.compile(r"Requested prompt logprobs of (\d+), which is greater than max allowed: (\d+)")


@dataclass(frozen=True)
class Call:
    method: str  # "GET" | "POST"
    path: str
    body: dict[str, Any] | None = None
    allow_status: tuple[int, ...] = ()  # statuses answered to the step (as {"status": s, "error": ...})


Steps = Generator[Call, Any, Any]


def refuse(message: str, field: str | None = None) -> TeacherServiceError:
    """A request the vLLM server cannot answer as asked: INVALID_ARGUMENT, never retried."""
    return TeacherServiceError("INVALID_ARGUMENT", message, field, 400, transport="http")


# ---- models ---------------------------------------------------------------------------------------------


def probe_limits(model: str) -> Steps:
    """(vocab_size, max_top_k) of a vLLM model from the messages of two requests its validation refuses.

    prompt_logprobs=-1 means "the whole vocabulary" (V); if the cap M is below V vLLM says "Requested
    prompt logprobs of V, which is greater than max allowed: M". If it is allowed (--max-logprobs -1), the
    cap is V, which an impossible K then reveals. The one-token prompt has no scored position, so even an
    accepted probe computes nothing but one greedy token.
    """
    body = {"model": model, "prompt": [0], "max_tokens": 1, "temperature": 0, "prompt_logprobs": -1}
    answer = yield Call("POST", "/v1/completions", body, allow_status=(400,))
    match = _CAP_RE.search(str(answer.get("error", {}).get("message", ""))) if "error" in answer else None
    if match:
        return int(match.group(1)), int(match.group(2))
    answer = yield Call("POST", "/v1/completions", {**body, "prompt_logprobs": PROBE_K}, allow_status=(400,))
    match = _CAP_RE.search(str(answer.get("error", {}).get("message", "")))
    if not match:
        raise TeacherServiceError("UNIMPLEMENTED", "the server at this URL does not answer like vLLM's "
                                  f"/v1/completions (prompt_logprobs probe: {str(answer)[:200]})")
    cap = int(match.group(2))
    return cap, cap


def list_models(limits: dict[str, tuple[int, int]]) -> Steps:
    """ModelInfo per served model; `limits` caches the probes per model name (one transport's lifetime)."""
    answer = yield Call("GET", "/v1/models")
    out = []
    for card in answer.get("data", []):
        name = str(card["id"])
        if name not in limits:
            limits[name] = yield from probe_limits(name)
        vocab_size, cap = limits[name]
        out.append(ModelInfo(name=name, vocab_size=vocab_size, tokenizer_sha256="",
                             max_seq_len=int(card.get("max_model_len") or 0), max_top_k=min(cap, vocab_size),
                             dtype="", fingerprint=""))
    return out


# ---- logits ---------------------------------------------------------------------------------------------


def _logprob(value: float) -> float:
    return -math.inf if value is None or value <= CLAMPED else float(value)


def sequence_logits(entries: list, token_ids: list[int], start: int, k: int) -> SequenceLogits:
    """Rows [start, T) from vLLM's prompt_logprobs entries (entries[i] scores token_ids[i])."""
    rows = len(token_ids) - start
    top_ids = np.zeros((rows, k), dtype=np.int32)
    top_logprobs = np.full((rows, k), -np.inf, dtype=np.float32)
    token_logprobs = np.empty(rows, dtype=np.float32)
    ranks = np.empty(rows, dtype=np.int32)
    for row in range(rows):
        entry = entries[start + row]
        actual = entry[str(token_ids[start + row])]
        token_logprobs[row] = _logprob(actual["logprob"])
        ranks[row] = int(actual["rank"])
        ranked = sorted((int(v["rank"]), int(t), _logprob(v["logprob"])) for t, v in entry.items())
        for j, (_, token_id, logprob) in enumerate(r for r in ranked if r[0] <= k):
            top_ids[row, j], top_logprobs[row, j] = token_id, logprob
    mass = np.exp(top_logprobs.astype(np.float64)).sum(axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log1p(-np.minimum(mass, 1.0)).astype(np.float32)
    result = SequenceLogits.from_dense(top_ids, top_logprobs, token_logprobs, tail)
    result.token_ranks = ranks
    return result


def logits(body: dict[str, Any]) -> Steps:
    """Our /v1/logits body -> one vLLM call (all sequences as one batch of prompts)."""
    if body.get("mode", "topk") != "topk":
        raise refuse("a vLLM server returns top-k rows only; mode='sample' needs a dualdistill teacher "
                     "(`dualdistill serve`)", "mode")
    if float(body.get("temperature", 1.0)) != 1.0:
        raise refuse("a vLLM server reports prompt logprobs at temperature 1 whatever the request says; "
                     "use temperature=1.0, or a dualdistill teacher for other temperatures", "temperature")
    k = int(body.get("top_k", 20))
    sequences = body["sequences"]
    request = {"model": body["model"], "prompt": [s["token_ids"] for s in sequences], "prompt_logprobs": k,
               "max_tokens": 1, "temperature": 0}
    answer = yield Call("POST", "/v1/completions", request)
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    return [sequence_logits(c["prompt_logprobs"], s["token_ids"], int(s["start"]), k)
            for c, s in zip(choices, sequences, strict=True)]


# ---- generate -------------------------------------------------------------------------------------------


def generate(body: dict[str, Any]) -> Steps:
    """Our /v1/generate body -> /tokenize per text or chat prompt, then one completions call."""
    model, n = body["model"], int(body.get("n", 1))
    prompts: list[list[int]] = []
    for prompt in body["prompts"]:
        if prompt.get("token_ids"):
            prompts.append([int(t) for t in prompt["token_ids"]])
            continue
        if prompt.get("messages"):
            call = {"model": model, "messages": prompt["messages"], "add_generation_prompt": True}
        else:
            call = {"model": model, "prompt": prompt.get("text", ""), "add_special_tokens": True}
        answer = yield Call("POST", "/tokenize", call)
        prompts.append([int(t) for t in answer["tokens"]])
    request = {
        "model": model, "prompt": prompts, "n": n, "max_tokens": int(body.get("max_new_tokens", 64)),
        "temperature": float(body.get("temperature", 1.0)), "top_p": float(body.get("top_p", 1.0)),
        "seed": int(body.get("seed", 0)) % 2**63, "return_token_ids": True,
    }
    answer = yield Call("POST", "/v1/completions", request)
    return [
        Completion(prompt_index=choice["index"] // n, prompt_token_ids=list(choice.get("prompt_token_ids") or
                   prompts[choice["index"] // n]), token_ids=list(choice.get("token_ids") or []),
                   text=choice.get("text", ""), finish_reason=choice.get("finish_reason") or "length")
        for choice in sorted(answer["choices"], key=lambda c: c["index"])
    ]


def steps_for(rpc: str, body: dict[str, Any] | None, limits: dict[str, tuple[int, int]]) -> Steps:
    if rpc == "ListModels":
        return list_models(limits)
    if rpc == "GetLogits":
        return logits(body or {})
    if rpc == "Generate":
        return generate(body or {})
    raise TeacherServiceError("UNIMPLEMENTED", f"{rpc} has no vLLM equivalent")


def error_of(status: int, content: dict | None, text: str, retry_after: float | None) -> TeacherServiceError:
    """A vLLM error answer ({"error": {"message", "type", "param", "code"}}) -> TeacherServiceError."""
    from dualdistill.client.errors import CODE_OF_HTTP_STATUS

    error = content.get("error") if isinstance(content, dict) else None
    message = str(error.get("message")) if isinstance(error, dict) else (text[:300] or f"HTTP {status}")
    field = error.get("param") if isinstance(error, dict) else None
    cap = re.search(r"Requested (?:prompt|sample) logprobs of (\d+), which is greater than max allowed: (\d+)",
                    message)
    if cap:
        message = (f"top_k={cap.group(1)} is over the vLLM server's limit of {cap.group(2)} (its --max-logprobs); "
                   f"ask for top_k <= {cap.group(2)}, or restart vLLM with a larger --max-logprobs "
                   f"(vLLM said: {message})")
        field = "top_k"
    code = CODE_OF_HTTP_STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")
    return TeacherServiceError(code, message, field, status, retry_after=retry_after, transport="http")
