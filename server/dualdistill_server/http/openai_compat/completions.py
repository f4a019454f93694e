"""`POST /v1/completions` with vLLM's semantics, answered by the same `TeacherService` as `/v1/logits`.

    CompletionRequest ─ checks (vLLM's messages) ─┬─ prompt scoring: service.logits(start=1, top_k=K, ranks)
                                                  ├─ generation:     service.generate(max_tokens, n, ...)
                                                  │    └─ its scoring: service.logits(start=len(prompt), top_k=N)
                                                  └─ CompletionResponse (logprobs.py shapes)

vLLM's rules followed here (vllm/entrypoints/openai/completion/): `echo` without `prompt_logprobs` scores
the prompt with `logprobs`; `max_tokens: 0` is allowed only with echo (nothing is generated); with echo the
legacy block covers prompt + generated tokens; `return_token_ids` also blanks the echoed prompt text;
logprobs are raw (temperature 1) unless the request opts in with `apply_temperature_to_logprobs`
(or the server with `compat_apply_temperature`); -1 means the whole vocabulary; a K above the server's
`max_top_k` gets vLLM's 400 ("Requested prompt logprobs of K, which is greater than max allowed: M").
Scoring goes through the result cache, dedupe, tenant limits and deadlines like any `/v1/logits` call.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from ...core import TeacherService
from ...errors import InvalidArgument, ModelNotFound
from ...schemas import FLOAT32_TINY, MAX_N, MIN_TEMPERATURE, GenerateRequest, LogitsRequest
from . import logprobs as shapes
from .schemas import CompletionRequest, prompt_batch, unsupported_fields
from .tokens import TokenTexts

DEFAULT_MAX_TOKENS = 16


def vllm_error(message: str, parameter: str | None = None, value: object = None) -> InvalidArgument:
    """An InvalidArgument whose message reads as vLLM's VLLMValidationError prints it."""
    extras = [f"parameter={parameter}"] if parameter is not None else []
    if value is not None:
        extras.append(f"value={value}")
    return InvalidArgument(f"{message} ({', '.join(extras)})" if extras else message, field=parameter)


@dataclass
class Plan:
    """The request's numbers, resolved and checked."""

    model: str
    prompts: list[list[int]]
    prompt_texts: list[str]
    max_tokens: int
    generate: bool  # False for echo with max_tokens 0
    top_n: int | None  # `logprobs` (legacy block), vocab-resolved
    prompt_k: int | None  # prompt logprobs per position (after vLLM's echo rule), vocab-resolved
    temperature: float
    top_p: float
    logprobs_temperature: float  # 1.0 (vLLM's raw logprobs) unless opted in


def resolve_model(service: TeacherService, requested: str | None) -> str:
    """The request's model (vLLM's 404 message when it is not served); none given = the first served."""
    names = [info.name for info in service.list_models()]
    if not requested:
        return names[0] if names else ""
    if requested not in names:
        raise ModelNotFound(
            f"The model `{requested}` does not exist. Valid aliases: {', '.join(names)}.", field="model"
        )
    return requested


def _resolve_k(value: int | None, vocab_size: int) -> int | None:
    return vocab_size if value == -1 else value


def check_logprobs_caps(top_n: int | None, prompt_k: int | None, max_top_k: int) -> None:
    """vLLM's `_validate_logprobs`: sample logprobs first, then prompt logprobs (0 is never refused)."""
    if top_n and top_n > max_top_k:
        raise vllm_error(
            f"Requested sample logprobs of {top_n}, which is greater than max allowed: {max_top_k}",
            "logprobs", top_n,
        )
    if prompt_k and prompt_k > max_top_k:
        raise vllm_error(
            f"Requested prompt logprobs of {prompt_k}, which is greater than max allowed: {max_top_k}",
            "prompt_logprobs", prompt_k,
        )


def _sampling(body: CompletionRequest) -> tuple[float, float]:
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    top_p = 1.0 if body.top_p is None else float(body.top_p)
    if not temperature == temperature or temperature in (float("inf"), float("-inf")):
        raise vllm_error(f"temperature must be a finite number, got {temperature}.", "temperature", temperature)
    if temperature < 0:
        raise vllm_error(f"temperature must be non-negative, got {temperature}.", "temperature", temperature)
    if temperature > 2:
        raise vllm_error(f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature)
    if not 0 < top_p <= 1:
        raise vllm_error(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if top_p < FLOAT32_TINY:  # vLLM takes it; here it would round to 0 in float32
        raise vllm_error(f"top_p must be at least {FLOAT32_TINY} (> 0 in float32), got {top_p}.", "top_p", top_p)
    if body.n < 1:
        raise vllm_error(f"n must be at least 1, got {body.n}.")
    if body.n > MAX_N:
        raise vllm_error(f"n must be at most {MAX_N} here, got {body.n}.", "n", body.n)
    # vLLM: below 1e-5 is greedy, and (0, 0.01) is raised to 0.01.
    temperature = 0.0 if temperature < 1e-5 else max(temperature, 0.01)
    return temperature, top_p


async def plan(service: TeacherService, body: CompletionRequest, apply_temperature_default: bool) -> Plan:
    refused = unsupported_fields(body)
    if refused:
        raise InvalidArgument(
            f"`{refused[0]}` is not supported by this server (a dualdistill teacher implements the scoring and "
            "sampling subset of vLLM's completions API); leave it unset",
            field=refused[0],
        )
    name = resolve_model(service, body.model)
    info = service.served_model(name).info
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    if max_tokens < 0 or (max_tokens == 0 and not body.echo):
        raise vllm_error(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens)
    top_n = _resolve_k(body.logprobs, info.vocab_size)
    prompt_k = body.prompt_logprobs if body.prompt_logprobs is not None else (body.logprobs if body.echo else None)
    prompt_k = _resolve_k(prompt_k, info.vocab_size)
    check_logprobs_caps(top_n, prompt_k, info.max_top_k)
    temperature, top_p = _sampling(body)

    apply = apply_temperature_default if body.apply_temperature_to_logprobs is None else body.apply_temperature_to_logprobs
    logprobs_temperature = 1.0
    if apply:
        if temperature < MIN_TEMPERATURE:
            raise InvalidArgument(
                f"apply_temperature_to_logprobs needs temperature >= {MIN_TEMPERATURE} (got {temperature}); "
                "greedy requests score at temperature 1",
                field="temperature",
            )
        logprobs_temperature = temperature

    batch = prompt_batch(body)
    if isinstance(batch[0], str):
        texts = [str(t) for t in batch]
        prompts = await service.encode_texts(name, texts, add_special_tokens=body.add_special_tokens)
        prompt_texts = texts
    else:
        prompts = [list(p) for p in batch]  # type: ignore[arg-type]
        prompt_texts = []
    for index, ids in enumerate(prompts):
        if not ids:
            raise InvalidArgument("the prompt encodes to no tokens", field=f"prompt[{index}]")
        for token_id in ids:  # vLLM's check and message, before the core's own
            if token_id >= info.vocab_size:
                raise InvalidArgument(f"Token id {token_id} is out of vocabulary")
    return Plan(name, prompts, prompt_texts, max_tokens, not (body.echo and max_tokens == 0), top_n, prompt_k,
                temperature, top_p, logprobs_temperature)


async def _score(
    service: TeacherService, p: Plan, sequences: list[list[int]], starts: list[int], k: int, *, ranks: bool,
    request_id: str, timeout: float | None,
):
    """service.logits over the sequences that have positions to score (a 1-token prompt has none)."""
    wanted = [i for i, (seq, start) in enumerate(zip(sequences, starts, strict=True)) if start < len(seq)]
    results: list = [None] * len(sequences)
    if not wanted:
        return results
    request = LogitsRequest(
        model=p.model,
        sequences=[{"token_ids": sequences[i], "start": starts[i]} for i in wanted],
        top_k=max(k, 1),
        temperature=p.logprobs_temperature,
    )
    answer = await service.logits(request, request_id=request_id, timeout=timeout, token_ranks=ranks)
    for i, result in zip(wanted, answer.results, strict=True):
        results[i] = result
    return results


async def create_completion(
    service: TeacherService,
    texts: TokenTexts,
    body: CompletionRequest,
    *,
    request_id: str,
    timeout: float | None,
    apply_temperature_default: bool = False,
) -> dict:
    """The CompletionResponse of `body` as a JSON-ready dict (vLLM's key order)."""
    p = await plan(service, body, apply_temperature_default)
    fingerprint = service.served_model(p.model).info.fingerprint

    async def score_prompts():
        if p.prompt_k is None:
            return None
        return await _score(service, p, p.prompts, [1] * len(p.prompts), p.prompt_k, ranks=True,
                            request_id=request_id, timeout=timeout)

    async def generate():
        if not p.generate:
            return None
        request = GenerateRequest(
            model=p.model,
            prompts=[{"token_ids": ids} for ids in p.prompts],
            max_new_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            n=body.n,
            seed=secrets.randbits(63) if body.seed is None else body.seed % 2**64,
        )
        return (await service.generate(request, request_id=request_id, timeout=timeout)).completions

    prompt_results, completions = await asyncio.gather(score_prompts(), generate())
    outputs = await _outputs(service, texts, p, body, completions, request_id, timeout)
    prompt_entries = None
    if prompt_results is not None:
        prompt_entries = await asyncio.to_thread(_prompt_entries, p, prompt_results, texts)
    return await asyncio.to_thread(_response, p, body, texts, prompt_entries, outputs, request_id, fingerprint)


@dataclass
class Output:
    """One choice's generated part (empty for echo with max_tokens 0)."""

    prompt_index: int
    token_ids: list[int]
    text: str
    finish_reason: str
    stop_reason: str | None
    entries: list | None  # logprobs entries of the generated tokens, when `logprobs` is set


async def _outputs(service, texts, p: Plan, body, completions, request_id, timeout) -> list[Output]:
    if completions is None:
        # echo with max_tokens 0: n choices per prompt, each the prompt alone
        return [Output(i, [], "", "length", None, None) for i in range(len(p.prompts)) for _ in range(body.n)]
    outputs = [await asyncio.to_thread(_apply_stop, texts, c, body.stop) for c in completions]
    if p.top_n is not None:
        sequences = [p.prompts[o.prompt_index] + o.token_ids for o in outputs]
        starts = [len(p.prompts[o.prompt_index]) for o in outputs]
        results = await _score(service, p, sequences, starts, p.top_n, ranks=False, request_id=request_id,
                               timeout=timeout)

        def build() -> None:
            for output, result, seq, start in zip(outputs, results, sequences, starts, strict=True):
                output.entries = [] if result is None else shapes.entries(
                    result, seq, start, p.top_n, texts, with_ranks=False)

        await asyncio.to_thread(build)
    return outputs


def _apply_stop(texts: TokenTexts, completion, stop: str | list[str] | None) -> Output:
    """A completion cut at its first stop string: the shortest token prefix whose text contains one,
    and the text before it (vLLM's stop strings, include_stop_str_in_output false)."""
    ids = list(completion.token_ids)
    text = completion.text
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    if stops and any(s in text for s in stops):
        for end in range(1, len(ids) + 1):
            prefix = texts.decode(ids[:end], skip_special_tokens=True)
            hits = [(prefix.find(s), s) for s in stops if s in prefix]
            if hits:
                at, which = min(hits)
                return Output(completion.prompt_index, ids[:end], prefix[:at], "stop", which, None)
    return Output(completion.prompt_index, ids, text, completion.finish_reason, None, None)


def _prompt_entries(p: Plan, results: list, texts: TokenTexts) -> list[list]:
    out = []
    for ids, result in zip(p.prompts, results, strict=True):
        rows = [] if result is None else shapes.entries(result, ids, 1, p.prompt_k or 0, texts, with_ranks=True)
        out.append([None, *rows])
    return out


def _response(
    p: Plan, body: CompletionRequest, texts: TokenTexts, prompt_entries, outputs: list[Output], request_id: str,
    fingerprint: str,
) -> dict:
    choices = []
    for output in outputs:
        prompt_ids = p.prompts[output.prompt_index]
        entries = None if prompt_entries is None else prompt_entries[output.prompt_index]
        if body.echo:
            if body.return_token_ids:
                prompt_text = ""
            elif p.prompt_texts:
                prompt_text = p.prompt_texts[output.prompt_index]
            else:
                prompt_text = texts.decode(prompt_ids)
            token_ids = prompt_ids + output.token_ids
            position_entries = None if entries is None else entries + (output.entries or [])
            text = prompt_text + output.text
        else:
            token_ids, position_entries, text = output.token_ids, output.entries, output.text
        block = None
        if p.top_n is not None and position_entries is not None:
            block = shapes.legacy_logprobs(
                token_ids, position_entries, p.top_n, texts, as_token_ids=bool(body.return_tokens_as_token_ids)
            )
        choices.append({
            "index": len(choices),
            "text": text,
            "logprobs": block,
            "finish_reason": output.finish_reason,
            "stop_reason": output.stop_reason,
            "token_ids": output.token_ids if body.return_token_ids else None,
            "prompt_logprobs": None if entries is None else shapes.prompt_logprobs_json(entries),
            "prompt_token_ids": prompt_ids if body.return_token_ids else None,
            "routed_experts": None,
        })
    prompt_tokens = sum(len(ids) for ids in p.prompts)
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": p.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": f"dualdistill-{fingerprint}",
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
