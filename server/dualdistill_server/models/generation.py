"""Sampled completions with a KV cache: greedy (temperature 0) or temperature + nucleus (top_p) sampling.

All prompts x n samples run as one left-padded batch (chunked to `max_batch_rows`). Every row (prompt p,
sample j) draws its uniforms from its own CPU generator seeded by blake2b(seed, prompt ids, j), so a
completion depends on (seed, prompt, j) and not on the other prompts of the request (up to the
floating-point effect of padding on the logits).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch

_SEED_MASK = (1 << 63) - 1


@dataclass
class GeneratedRow:
    prompt_index: int  # which prompt
    token_ids: list[int]  # generated ids, the stop token included when finish_reason == "stop"
    finish_reason: str  # "stop" | "length"


def completion_seed(seed: int, prompt: list[int], sample_index: int) -> int:
    """63-bit seed of one completion: blake2b(seed u64 LE || prompt int64 LE || sample_index i64 LE)."""
    digest = hashlib.blake2b(digest_size=8, person=b"dd-generate-v1")
    digest.update(int(seed & ((1 << 64) - 1)).to_bytes(8, "little"))
    digest.update(np.asarray(prompt, dtype="<i8").tobytes())
    digest.update(int(sample_index).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") & _SEED_MASK


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B, V) probabilities of softmax(logits / temperature) restricted to the nucleus.

    The nucleus is the smallest set of most likely ids whose mass reaches top_p (the id that crosses top_p
    is kept, and so is the top id always); the rest get probability 0. Not renormalised (the sampler
    scales by the row sum).
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: (B, V) unnormalised probabilities, (B,) uniforms in [0, 1) -> (B,) ids."""
    cdf = probs.cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (uniforms.to(cdf.device) * cdf[:, -1])[:, None], right=True)
    return ids.squeeze(1).clamp_max(probs.shape[1] - 1)


def forward_features(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether `logits_to_keep` is accepted) of `model.forward`.

    transformers 5.x renamed `past_key_values` to `cache`; some architectures lack `logits_to_keep`.
    """
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _generate_chunk(
    model: torch.nn.Module,
    prompts: list[list[int]],
    budgets: list[int],
    seeds: list[int],
    *,
    temperature: float,
    top_p: float,
    stop_ids: set[int],
    pad_id: int,
    device: torch.device,
) -> list[tuple[list[int], str]]:
    """One left-padded batch; row b generates at most budgets[b] tokens. Returns (token_ids, reason)."""
    rows, longest = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((rows, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, longest), dtype=torch.long)
    for b, prompt in enumerate(prompts):
        input_ids[b, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[b, longest - len(prompt) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    cache_arg, has_logits_to_keep = forward_features(model)
    cache, extra = _new_cache(model), ({"logits_to_keep": 1} if has_logits_to_keep else {})
    generated: list[list[int]] = [[] for _ in range(rows)]
    reasons: list[str | None] = [None] * rows
    for _step in range(max(budgets)):
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{cache_arg: cache}, **extra,
        ).logits[:, -1, :]  # (B, V)
        if temperature == 0.0:
            next_ids = torch.argmax(logits, dim=-1)
        else:
            uniforms = torch.cat([torch.rand(1, generator=g) for g in generators])
            next_ids = draw(nucleus_probs(logits, temperature, top_p), uniforms)
        for b, token in enumerate(next_ids.tolist()):
            if reasons[b] is not None:
                continue
            generated[b].append(token)
            if token in stop_ids:
                reasons[b] = "stop"
            elif len(generated[b]) >= budgets[b]:
                reasons[b] = "length"
        if all(r is not None for r in reasons):
            break
        input_ids = next_ids[:, None]
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
    return [(generated[b], reasons[b] or "length") for b in range(rows)]


def generate_rows(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    n: int,
    seed: int,
    stop_ids: set[int],
    max_seq_len: int,
    pad_id: int,
    device: torch.device,
    max_batch_rows: int = 64,
) -> list[GeneratedRow]:
    """n completions per prompt, ordered by prompt then sample; a row stops at a stop id, after
    max_new_tokens, or when prompt + completion reaches max_seq_len (finish_reason "length")."""
    for index, prompt in enumerate(prompts):
        if not 1 <= len(prompt) < max_seq_len:
            raise ValueError(f"prompts[{index}] has {len(prompt)} tokens; it needs 1 to {max_seq_len - 1}")
    plan = [(p, j) for p in range(len(prompts)) for j in range(n)]
    out: list[GeneratedRow] = []
    if max_new_tokens <= 0:
        return [GeneratedRow(p, [], "length") for p, _ in plan]
    with torch.inference_mode():
        for lo in range(0, len(plan), max_batch_rows):
            chunk = plan[lo : lo + max_batch_rows]
            chunk_prompts = [prompts[p] for p, _ in chunk]
            done = _generate_chunk(
                model,
                chunk_prompts,
                budgets=[min(max_new_tokens, max_seq_len - len(prompts[p])) for p, _ in chunk],
                seeds=[completion_seed(seed, prompts[p], j) for p, j in chunk],
                temperature=temperature,
                top_p=top_p,
                stop_ids=stop_ids,
                pad_id=pad_id,
                device=device,
            )
            out.extend(GeneratedRow(p, ids, reason) for (p, _), (ids, reason) in zip(chunk, done, strict=True))
    return out
