"""Teacher distributions from vLLM's prompt logprobs (docs/api.md "Semantics", "topk" mode, temperature 1).

A logits task is one vLLM request over the sequence's token ids with `prompt_logprobs = top_k + m` (m =
TAIL_RANKS more ranks than asked, for the tail) and one greedy output token that is thrown away (vLLM must
generate at least one). vLLM computes, for every prompt position i >= 1, log_softmax(float32(logits[i - 1]))
and returns 1 + k + m entries per position: the actual token x[i] with its rank, then the top k + m in rank
order, which reach us as numpy arrays (engines/vllm/prompt_logprobs.py). From them:

    token_logprobs[r]  = entry 0 of position start + r
    top ids / logprobs = the first k ranks, re-sorted by (logprob desc, id asc) like the hf engine
    tail[r]            = log(1 - sum of the top k) = log(next m ranks' mass + the rest's mass)

The hf engine computes the tail as a logsumexp over the complement, exact to float32 rounding however
small it is. 1 - sum(top k) from float32 logprobs is exact only to ~1e-7 in mass (the rounding of vLLM's
log-normaliser), so the tail is summed instead from the m ranks after the top k (each exact to float32
in log) plus the mass beyond them, rest = 1 - sum(top k + m), taken only where it is above that rounding
(REST_RESOLUTION) and never above (V - k - m) x p(rank k + m) (no id beyond can be likelier than the last
one returned). The tail is then exact where the m ranks hold most of it (peaked rows, whose tails are the small
ones); the rest carries the error of vLLM's log-normaliser itself (measured on SmolLM2: vLLM's float32
logprobs sit ~2e-5 above transformers'), so the tail agrees with the hf engine's to ~5e-5 in probability
mass, within 1e-3 in log-probability where its mass is >= 0.05 or held by the m ranks. A row that covers
the vocab gets -inf, as with hf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays
from dualdistill_server.models.types import LogitsTask

TAIL_RANKS = 128  # m: ranks fetched beyond top_k to sum the tail from (at most the vocab)
REST_RESOLUTION = 1e-6  # below this, 1 - sum(probabilities) is float32 rounding, not mass


def fetched_ranks(top_k: int, vocab_size: int) -> int:
    """k + m, at most the vocab: how many ranks per position one task asks vLLM for."""
    return min(top_k + TAIL_RANKS, vocab_size)


def prompt_logprob_params(ranks: int) -> Any:
    """SamplingParams of one logits task: prompt logprobs only, token ids only, the final output only."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=ranks,
        flat_logprobs=True,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def tail_logprobs(ranked: np.ndarray, top_k: int, vocab_size: int) -> np.ndarray:
    """(R, k + m) logprobs in rank order -> (R,) float64 log(1 - sum of the first k), as described above."""
    ranked = np.asarray(ranked, dtype=np.float64)
    rows, fetched = ranked.shape
    if top_k >= vocab_size:
        return np.full(rows, -np.inf)
    probs = np.exp(ranked)
    beyond = vocab_size - fetched  # ids never returned
    rest = 1.0 - probs.sum(axis=1)
    rest = np.where(rest > REST_RESOLUTION, np.minimum(rest, beyond * probs[:, -1]), 0.0)
    with np.errstate(divide="ignore"):  # a zero tail (all mass in the top k, in float64) is -inf
        return np.log(probs[:, top_k:].sum(axis=1) + rest)


def sequence_logits(prompt: PromptLogprobArrays, task: LogitsTask, vocab_size: int) -> SequenceLogits:
    """A request's prompt logprobs (engines/vllm/prompt_logprobs.py) of `prompt_logprob_params(fetched_ranks(...))`
    -> the task's SequenceLogits. Rows are numpy throughout: no per-position Python work."""
    k, length = task.params.top_k, len(task.token_ids)
    width = 1 + fetched_ranks(k, vocab_size)
    if prompt.positions != length - 1 or prompt.logprobs.shape[1] != width:
        raise RuntimeError(
            f"vLLM returned prompt logprobs of shape {prompt.logprobs.shape}; expected ({length - 1}, {width})"
        )
    rows = slice(task.start - 1, None)  # row j is position j + 1
    ids, values = prompt.token_ids[rows], prompt.logprobs[rows]  # (R, 1 + k + m)
    if not np.array_equal(ids[:, 0], task.token_ids[task.start :]):
        raise RuntimeError("vLLM's prompt logprobs are not those of the sequence's tokens")
    top_ids, top_values = ranked_top_k(ids[:, 1 : k + 1], values[:, 1 : k + 1])
    tail = tail_logprobs(values[:, 1:], k, vocab_size)
    result = SequenceLogits.from_dense(top_ids, top_values, values[:, 0], tail)
    if task.token_ranks:  # the actual token's true 1-based rank over the vocab
        result.token_ranks = prompt.token_ranks[rows].astype(np.int64)
    return result


def ranked_top_k(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, k) ids / logprobs in vLLM's rank order -> (int64, float32) sorted by (logprob desc, id asc), like hf.

    vLLM's ranks come from torch.topk, by logprob descending with ties in the kernel's order, so only the
    rows that are not strictly descending (ties, or NaN) are re-sorted: the others' order is already the
    only one."""
    ids, values = ids.astype(np.int64), values.astype(np.float32, copy=False)
    unsorted = (values[:, 1:] >= values[:, :-1]).any(axis=1) | np.isnan(values).any(axis=1)
    rows = np.flatnonzero(unsorted)
    if rows.size:
        order = np.lexsort((ids[rows], -values[rows]), axis=-1)
        ids[rows] = np.take_along_axis(ids[rows], order, axis=1)
        values = values.copy()
        values[rows] = np.take_along_axis(values[rows], order, axis=1)
    return ids, values
