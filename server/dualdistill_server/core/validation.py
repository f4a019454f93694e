"""Checks that depend on the served model and the server's limits, and the conversion to model tasks.

Static bounds (types, start >= 1, start < len, temperature > 0 ...) were checked by `schemas.py`; here
come the limits only the core knows: vocab size, max_seq_len, max_top_k, max_samples. Every error names
the offending field with its JSON path, e.g. `sequences[3].token_ids[17]`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..config import ServerConfig
from ..errors import InvalidArgument
from ..models import LogitsTask, ModelInfo
from ..schemas import GenerateRequest, LogitsRequest


def check_request_tokens(num_tokens: int, config: ServerConfig, *, at_least: bool = False) -> None:
    """A request holding more tokens than the queue ever admits is refused before anything is computed
    (whatever the cache holds, so the answer does not depend on the cache's state)."""
    if num_tokens > config.max_queue_tokens:
        raise InvalidArgument(
            f"the request holds {'at least ' if at_least else ''}{num_tokens} tokens, more than the queue ever admits "
            f"(max_queue_tokens={config.max_queue_tokens}); split it into smaller requests",
            field="sequences",
        )


def check_sequence_length(length: int, max_seq_len: int, field: str, model: str | None = None) -> None:
    if length > max_seq_len:
        whom = f"model {model!r} accepts" if model else "the server accepts"
        raise InvalidArgument(
            f"sequence has {length} tokens; {whom} at most {max_seq_len} (max_seq_len)", field=field
        )


def token_array(token_ids: list[int], info: ModelInfo, field: str) -> np.ndarray:
    """(T,) int64 ids, every one < vocab_size (the first bad one is named)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= info.vocab_size))
    if len(bad):
        j = int(bad[0])
        raise InvalidArgument(
            f"token id {int(ids[j])} is outside the vocabulary of model {info.name!r} "
            f"(0 <= id < {info.vocab_size})",
            field=f"{field}[{j}]",
        )
    return ids


def logits_tasks(
    request: LogitsRequest, info: ModelInfo, config: ServerConfig, *, token_ranks: bool = False
) -> list[LogitsTask]:
    """One LogitsTask per sequence, after checking the request against the model's limits. `token_ranks`:
    the tasks also compute the actual token's rank per row (asked for by the OpenAI dialect only)."""
    # Each limit applies where its parameter is used: top_k shapes topk rows, samples the sampled ones
    # (the default samples=64 must not fail a topk request on a server with max_samples < 64).
    params = request.params
    check_request_tokens(request.num_tokens, config)
    if params.mode == "topk" and params.top_k > info.max_top_k:
        raise InvalidArgument(
            f"top_k must be <= {info.max_top_k} for model {info.name!r} (min of max_top_k and vocab size), "
            f"got {params.top_k}",
            field="top_k",
        )
    if params.mode == "sample" and params.samples > config.max_samples:
        raise InvalidArgument(
            f"samples must be <= max_samples = {config.max_samples}, got {params.samples}", field="samples"
        )
    tasks = []
    for i, sequence in enumerate(request.sequences):
        field = f"sequences[{i}].token_ids"
        check_sequence_length(len(sequence.token_ids), info.max_seq_len, field, info.name)
        tasks.append(
            LogitsTask(
                token_ids=token_array(sequence.token_ids, info, field),
                start=sequence.start,
                params=params,
                token_ranks=token_ranks,
            )
        )
    return tasks


def generate_budget(request: GenerateRequest, config: ServerConfig) -> int:
    """prompts x n x max_new_tokens: the most tokens the request can make the model generate. Checked
    against max_generate_tokens before any work, since generation is the service's most expensive call."""
    return generate_budget_of(len(request.prompts), request.n, request.max_new_tokens, config)


def generate_budget_of(prompts: int, n: int, max_new_tokens: int, config: ServerConfig) -> int:
    budget = prompts * n * max_new_tokens
    if budget > config.max_generate_tokens:
        raise InvalidArgument(
            f"prompts x n x max_new_tokens = {prompts} x {n} x {max_new_tokens} = "
            f"{budget} is over max_generate_tokens = {config.max_generate_tokens}; split the prompts over "
            "several requests or ask for fewer tokens",
            field="max_new_tokens",
        )
    return budget


def _chat_errors() -> tuple[type[Exception], ...]:
    try:  # jinja2 renders chat templates; it comes with the tokenizer stack, not with us
        from jinja2 import TemplateError
    except ImportError:
        return (ValueError,)
    return (ValueError, TemplateError)


@functools.lru_cache(maxsize=16)
def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` stands for (its longest vocabulary entry: a byte-level
    entry has one character per byte, so it is never shorter than the text it decodes to)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def check_text_fits(text_chars: int, model: Any, field: str) -> None:
    """Refuse, before tokenizing, a text that needs more than max_seq_len tokens whatever it says: each
    token stands for at most `longest_token_chars` characters. (15 MB of prompt text held the tokenizer,
    and the GIL with it, for over a minute.)"""
    limit = model.info.max_seq_len * longest_token_chars(model.tokenizer)
    if text_chars > limit:
        raise InvalidArgument(
            f"the text has {text_chars} characters; model {model.info.name!r} takes at most {limit} "
            f"(max_seq_len = {model.info.max_seq_len} tokens of at most {limit // model.info.max_seq_len} "
            "characters each)",
            field=field,
        )


def prompt_ids(request: GenerateRequest, model) -> list[list[int]]:
    """Each prompt as token ids (text encoded, chat template applied), checked against the model's limits.

    Runs on the model's worker thread: the tokenizer is not shared with other threads.
    """
    info: ModelInfo = model.info
    out = []
    for i, prompt in enumerate(request.prompts):
        field = f"prompts[{i}]"
        if prompt.messages:
            field += ".messages"
            check_text_fits(sum(len(m.content) + len(m.role) for m in prompt.messages), model, field)
            try:
                ids = list(model.encode_chat([m.model_dump() for m in prompt.messages]))
            except _chat_errors() as exc:  # no chat template, or the template refused the turns
                raise InvalidArgument(str(exc), field=field) from exc
        elif prompt.token_ids:
            ids = token_array(prompt.token_ids, info, f"{field}.token_ids").tolist()
            field += ".token_ids"
        else:
            field += ".text"
            check_text_fits(len(prompt.text or ""), model, field)
            ids = list(model.encode_text(prompt.text or ""))
        if not ids:
            raise InvalidArgument("the prompt encodes to no tokens", field=field)
        if len(ids) >= info.max_seq_len:
            raise InvalidArgument(
                f"the prompt has {len(ids)} tokens; model {info.name!r} needs it shorter than "
                f"max_seq_len = {info.max_seq_len} to generate anything",
                field=field,
            )
        out.append(ids)
    return out
