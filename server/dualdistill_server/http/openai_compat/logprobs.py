"""vLLM's logprob shapes, built from our `SequenceLogits` rows.

One *entry* per scored position i (vLLM's `dict[int, Logprob]`), in vLLM's insertion order:

    {x[i]: (log p(x[i]), rank of x[i]), top_ids[0]: (top_logprobs[0], 1), ..., top_ids[K-1]: (..., K)}

The actual token comes first with its true rank (#ids whose logprob is >= its own, ties counted ahead);
when it is also among the top K its value is the top-K one (rank = its place there), as a dict written
in that order keeps the first key's position and the last value. So an entry has K or K + 1 items.
Position 0 of a prompt has no entry (None).

From the entries:
- `prompt_logprobs_json`: choices[i].prompt_logprobs, `{"<id>": {"logprob", "rank", "decoded_token"}}`,
  -inf clamped to -9999.0 (vLLM's `clamp_prompt_logprobs`);
- `legacy_logprobs`: the OpenAI `logprobs` block (`tokens`, `token_logprobs`, `top_logprobs`,
  `text_offset`) over a token list, top_logprobs holding the first N + 1 items of each entry, keyed by
  token text (or "token_id:N"), logprobs clamped to >= -9999.0 (vLLM's `_create_completion_logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualdistill.protocol.results import SequenceLogits

from .tokens import TokenTexts

CLAMP = -9999.0  # what vLLM sends for -inf (JSON has no infinity)


@dataclass
class Entry:
    """The logprobs of one position: token id -> (logprob, rank), in vLLM's order; `texts` likewise."""

    logprobs: dict[int, tuple[float, int | None]]
    texts: dict[int, str]


def entries(
    result: SequenceLogits,
    token_ids: list[int],
    start: int,
    k: int,
    texts: TokenTexts,
    *,
    with_ranks: bool,
    context: list[int] | None = None,
) -> list[Entry]:
    """Entries of positions [start, len(token_ids)) from `result` (rows of those positions, top_k >= k).

    `k`: top entries kept (0: the actual token only). Ranks come from `result.token_ranks` when
    `with_ranks`. `context`: actual tokens before `start` that have entries (for the U+FFFD repair).
    """
    ids, logprobs, _ = result.dense()
    ranks = result.token_ranks if with_ranks else None
    actual_logprobs = result.token_logprobs
    seen = list(context or [])
    out = []
    for row in range(result.num_rows):
        actual = int(token_ids[start + row])
        items: dict[int, tuple[float, int | None]] = {
            actual: (float(actual_logprobs[row]), int(ranks[row]) if ranks is not None else None)
        }
        for j in range(k):
            items[int(ids[row, j])] = (float(logprobs[row, j]), j + 1)
        keys = list(items)
        out.append(Entry(items, dict(zip(keys, texts.position(keys, seen), strict=True))))
        seen.append(actual)
    return out


def _clamped(value: float) -> float:
    return CLAMP if value == -np.inf else value


def prompt_logprobs_json(prompt_entries: list[Entry | None]) -> list[dict | None]:
    """choices[i].prompt_logprobs: one item per prompt token, None where there is no entry."""
    return [
        None
        if entry is None
        else {
            str(token_id): {"logprob": _clamped(logprob), "rank": rank, "decoded_token": entry.texts[token_id]}
            for token_id, (logprob, rank) in entry.logprobs.items()
        }
        for entry in prompt_entries
    ]


def legacy_logprobs(
    token_ids: list[int],
    position_entries: list[Entry | None],
    top_n: int,
    texts: TokenTexts,
    *,
    as_token_ids: bool,
) -> dict:
    """The OpenAI completions `logprobs` block over `token_ids` (entries aligned with them)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict | None] = []
    offsets: list[int] = []
    last_len = 0

    def name(entry: Entry, token_id: int) -> str:
        return f"token_id:{token_id}" if as_token_ids else entry.texts[token_id]

    for token_id, entry in zip(token_ids, position_entries, strict=True):
        if entry is None:
            token = f"token_id:{token_id}" if as_token_ids else texts.single(token_id)
            tokens.append(token)
            token_logprobs.append(None)
            top_logprobs.append(None)
        else:
            token = name(entry, token_id)
            tokens.append(token)
            token_logprobs.append(max(entry.logprobs[token_id][0], CLAMP))
            top_logprobs.append(
                {
                    name(entry, key): max(value[0], CLAMP)
                    for index, (key, value) in enumerate(entry.logprobs.items())
                    if top_n == -1 or top_n >= index
                }
            )
        offsets.append(offsets[-1] + last_len if offsets else 0)
        last_len = len(token)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top_logprobs}
