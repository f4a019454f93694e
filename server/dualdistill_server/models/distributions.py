"""From next-token logits rows to per-sequence `SequenceLogits` (docs/api.md, "Semantics").

Call tree of `sequence_distributions` (N = rows of all sequences, V = vocab, k = largest top_k):

    logits (N, V) -> log_softmax(float32(logits) / temperature)  = logprobs (N, V)
      ├─ token_logprobs = logprobs[r, x[i]]                          (N,)
      ├─ "topk" rows:   sorted_topk(logprobs, k)                     (N_topk, k) ids and logprobs
      ├─ "sample" rows: sample_rows(logprobs[seq], samples, gen)     unique ids + counts, per sequence
      └─ tail = complement_logsumexp_(logprobs, row's ids)           (N,)  (masks logprobs in place, last)

Everything runs on the model's device; only the finished rows are copied to the host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import torch

from dualdistill.protocol.params import LOGITS_MODES
from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.models.types import LogitsTask

_SEED_MASK = (1 << 63) - 1


def sequence_seed(seed: int, token_ids: np.ndarray, start: int) -> int:
    """63-bit seed of a sequence's random stream: blake2b(seed u64 LE || token_ids int64 LE || start i64 LE).

    Depends on nothing else (not the batch, not the sequence's index in the request), so sampled rows are
    reproducible and cacheable per sequence.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"dd-sample-v1")
    digest.update(int(seed & ((1 << 64) - 1)).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(token_ids, dtype="<i8").tobytes())
    digest.update(int(start).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") & _SEED_MASK


def sorted_topk(logprobs: torch.Tensor, ks: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row top-k_r of `logprobs` (R, V), sorted by value descending, ties toward the lower id; `ks` (R,)
    or one k for every row.

    Returns (ids, values), each (R, kmax) with kmax = max(ks); row r is meaningful in its first ks[r]
    columns. The kmax(+1) candidates of every row come from `_ordered_candidates` in (value desc, id asc)
    order. A row whose k-th and (k+1)-th values tie could have picked either id, and only those (rare)
    rows are redone with a full stable sort.
    """
    rows, vocab = logprobs.shape
    kmax = ks if isinstance(ks, int) else int(ks.max())
    width = min(kmax + 1, vocab)
    ids, values = _ordered_candidates(logprobs, width)
    boundary_tie = None  # rows whose k-th and (k+1)-th candidates tie
    if isinstance(ks, int):  # one k: two columns
        boundary_tie = values[:, ks - 1] == values[:, ks] if ks < vocab else None
    elif bool((has_next := ks < vocab).any()):
        at_k = values.gather(1, (ks - 1).clamp_max(width - 1)[:, None]).squeeze(1)
        after_k = values.gather(1, ks.clamp_max(width - 1)[:, None]).squeeze(1)
        boundary_tie = has_next & (at_k == after_k)
    for r in [] if boundary_tie is None else torch.nonzero(boundary_tie).flatten().tolist():
        full = torch.sort(logprobs[r], descending=True, stable=True)
        ids[r], values[r] = full.indices[:width], full.values[:width]
    return ids[:, :kmax], values[:, :kmax]


def _ordered_candidates(logprobs: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, values) (R, width): each row's `width` largest values, ordered by (value desc, id asc).

    On the CPU (float32 rows without NaN) torch.topk only selects them, unsorted, and numpy sorts each row's
    candidates by one packed 64-bit key, (value's order bits descending) << 32 | id: a vectorised sort of
    `width` integers per row, where torch.topk's own sort took most of its time whenever k is a sizeable
    part of the vocabulary (one-sequence calls of the tiny test model, 320 ids at k = 128: 0.10-0.12 ms
    sooner, bench/service_ab.py). The values are then read back at the sorted ids, so they keep their
    exact bits. Elsewhere torch.topk sorts them and orders ties arbitrarily, so the rows that hold a tie
    (equal neighbours; NaN counts as one) are re-sorted by (value desc, id asc); the other rows are
    strictly decreasing, their order already the only one.
    """
    if logprobs.device.type == "cpu" and logprobs.dtype == torch.float32 and logprobs.shape[1] < (1 << 31):
        candidates, candidate_ids = torch.topk(logprobs, width, dim=-1, sorted=False)
        host = candidates.numpy()
        if not np.isnan(host).any():
            order_bits = (host + np.float32(0.0)).view(np.int32)  # + 0.0: -0.0 ties with 0.0, as `==` says
            # float order as unsigned order: negative floats flip all bits, the others only the sign bit
            ascending = (order_bits ^ ((order_bits >> 31) | np.int32(-(1 << 31)))).view(np.uint32)
            keys = (~ascending).astype(np.uint64) << np.uint64(32)
            keys |= candidate_ids.numpy().astype(np.uint64)
            keys.sort(axis=-1)
            ids = torch.from_numpy((keys & np.uint64(0xFFFFFFFF)).astype(np.int64))
            return ids, logprobs.gather(1, ids)
    values, ids = torch.topk(logprobs, width, dim=-1)  # (R, width), values descending
    tied = _tied_rows(values)
    if not len(tied):  # every row strictly decreasing over all width columns
        return ids, values
    tied_ids, tied_values = ids[tied], values[tied]
    by_id = torch.argsort(tied_ids, dim=-1)
    tied_ids, tied_values = tied_ids.gather(1, by_id), tied_values.gather(1, by_id)
    by_value = torch.sort(tied_values, dim=-1, descending=True, stable=True).indices
    ids[tied], values[tied] = tied_ids.gather(1, by_value), tied_values.gather(1, by_value)
    return ids, values


def _tied_rows(values: torch.Tensor) -> torch.Tensor:
    """(T,) long indices of the rows of `values` (R, W) that are not strictly decreasing: equal neighbours,
    or a NaN (every comparison with it is False). On the CPU numpy compares the two strided views: 3x
    faster than torch there (0.22 against 0.67 ms for 1792 x 129 values)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):  # types numpy has
        host = values.numpy()
        return torch.from_numpy(np.flatnonzero(~(host[:, :-1] > host[:, 1:]).all(axis=1)))
    return torch.nonzero(~(values[:, :-1] > values[:, 1:]).all(dim=1)).flatten()


def sample_rows(
    logprobs: torch.Tensor, samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `samples` ids per row from p = exp(logprobs) (R, V); unique ids per row with their counts.

    Inverse-CDF sampling: u ~ U[0, 1) from `generator` (a CPU generator, so the stream is the same on any
    device), id = first index whose cumulative probability exceeds u * sum(p). Returns (row, ids, counts,
    logprobs), each (M,), ordered by row, then logprob descending, then id.
    """
    rows, vocab = logprobs.shape
    uniforms = torch.rand((rows, samples), generator=generator, dtype=torch.float32).to(logprobs.device)
    cdf = logprobs.exp().cumsum(dim=-1)  # (R, V)
    drawn = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True).clamp_max(vocab - 1)  # (R, samples)
    row_of = torch.arange(rows, device=logprobs.device)[:, None]
    keys, counts = torch.unique((row_of * vocab + drawn).flatten(), sorted=True, return_counts=True)
    row, ids = keys // vocab, keys % vocab  # sorted by (row, id)
    values = logprobs[row, ids]
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    return row[order], ids[order], counts[order], values[order]


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """One index tensor of the (row, id) pairs to mask: the only part as it is (any shape), else flat."""
    return parts[0] if len(parts) == 1 else torch.cat([part.reshape(-1) for part in parts])


def complement_logsumexp_(logprobs: torch.Tensor, row: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tail[r] = log(1 - sum_{j in row r} p_j) = logsumexp over the ids NOT in row r; (R, V) -> (R,).

    Computed as a logsumexp over the complement, which stays accurate when the row holds nearly all the
    mass (1 - sum would cancel); -inf when the row covers the vocab. Overwrites the row entries of
    `logprobs` with -inf (in place, to avoid a second (R, V) buffer): call it last. `row` and `ids` are
    flat (M,) pairs, or (R, k) with row[r] = r (every row, k ids each: a scatter along the vocab).
    """
    if row.dim() == 2 and row.shape[0] == logprobs.shape[0]:
        logprobs.scatter_(1, ids, float("-inf"))
        return torch.logsumexp(logprobs, dim=-1)
    logprobs[row, ids] = float("-inf")
    return torch.logsumexp(logprobs, dim=-1)


def _row_targets(tasks: Sequence[LogitsTask], device: torch.device) -> torch.Tensor:
    """(N,) the actual next token x[i] of every returned row, tasks concatenated."""
    flat = np.concatenate([np.asarray(t.token_ids[t.start :], dtype=np.int64) for t in tasks])
    return torch.from_numpy(flat).to(device)


def _topk_rows(
    logprobs: torch.Tensor, tasks: Sequence[LogitsTask], offsets: list[int]
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], torch.Tensor, torch.Tensor]:
    """Top-k rows of the "topk" tasks: ({task: (ids (R, k), logprobs (R, k)) on the host}, rows, ids) where
    (rows, ids) are the (row index, id) pairs in the rows, for the tail: (N_topk, k) each when all tasks
    share one k, else flat (M,)."""
    device = logprobs.device
    chosen = [b for b, t in enumerate(tasks) if t.params.mode == "topk"]
    if len(chosen) == len(tasks):
        rows = torch.arange(len(logprobs), device=device)
    else:
        rows = torch.cat([torch.arange(offsets[b], offsets[b + 1], device=device) for b in chosen])
    task_ks = [tasks[b].params.top_k for b in chosen]
    one_k = len(set(task_ks)) == 1
    if one_k:
        ks = task_ks[0]
    else:
        per_task = torch.tensor(task_ks, device=device)
        ks = per_task.repeat_interleave(torch.tensor([tasks[b].num_rows for b in chosen], device=device))
    ids, values = sorted_topk(logprobs if len(rows) == len(logprobs) else logprobs[rows], ks)  # (N_topk, kmax)
    ids_host, values_host = ids.cpu().numpy(), values.cpu().numpy()
    out, local = {}, 0
    for b in chosen:
        n, k = tasks[b].num_rows, tasks[b].params.top_k
        out[b] = (ids_host[local : local + n, :k], values_host[local : local + n, :k])
        local += n
    if one_k:  # every entry is in a row (no mask, no copy)
        return out, rows[:, None].expand_as(ids), ids
    kept = torch.arange(ids.shape[1], device=device)[None, :] < ks[:, None]
    return out, rows[:, None].expand_as(ids)[kept], ids[kept]


def sequence_distributions(logits: torch.Tensor, tasks: Sequence[LogitsTask]) -> list[SequenceLogits]:
    """Post-process the logits rows of a batch of tasks into one `SequenceLogits` per task.

    logits: (N, V), any float dtype, rows of task b are logits[i - 1] for i in [start_b, T_b), tasks
    concatenated in order (N = sum of T_b - start_b). Each task keeps its own temperature, top_k and mode.
    """
    for task in tasks:
        if task.params.mode not in LOGITS_MODES:
            raise ValueError(f"mode must be one of {LOGITS_MODES}, got {task.params.mode!r}")
    device = logits.device
    # (a few tensor ops fewer per call matter where a call is one short sequence: each op costs microseconds)
    if all(float(t.params.temperature) == 1.0 for t in tasks):  # x / 1 == x: skip the (N, V) copy and division
        logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)  # (N, V) float32
    else:
        num_rows = torch.tensor([t.num_rows for t in tasks], device=device)
        temperature = torch.tensor([float(t.params.temperature) for t in tasks], dtype=torch.float32, device=device)
        scaled = logits.to(torch.float32, copy=True).div_(temperature.repeat_interleave(num_rows)[:, None])
        logprobs = torch.log_softmax(scaled, dim=-1)  # (N, V) float32
        del scaled
    token_logprobs = logprobs.gather(1, _row_targets(tasks, device)[:, None]).squeeze(1)  # (N,)
    offsets = list(accumulate((t.num_rows for t in tasks), initial=0))  # task b's rows: [offsets[b], offsets[b + 1])

    mask_rows: list[torch.Tensor] = []  # (row, id) pairs inside the rows: excluded from the tail
    mask_ids: list[torch.Tensor] = []
    topk: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if any(t.params.mode == "topk" for t in tasks):
        topk, rows, ids = _topk_rows(logprobs, tasks, offsets)
        mask_rows.append(rows)
        mask_ids.append(ids)
    sampled: dict[int, tuple[torch.Tensor, ...]] = {}
    for b, task in enumerate(tasks):
        if task.params.mode == "sample":
            generator = torch.Generator(device="cpu").manual_seed(sequence_seed(task.params.seed, task.token_ids, task.start))
            sampled[b] = sample_rows(logprobs[offsets[b] : offsets[b + 1]], task.params.samples, generator)
            mask_rows.append(offsets[b] + sampled[b][0])
            mask_ids.append(sampled[b][1])

    token_host = token_logprobs.cpu().numpy()
    ranks_host = _token_ranks(logprobs, token_logprobs, tasks, offsets)  # before the tail masks logprobs
    tail_host = complement_logsumexp_(logprobs, _joined(mask_rows), _joined(mask_ids)).cpu().numpy()
    results = []
    for b, task in enumerate(tasks):
        lo, hi = offsets[b], offsets[b + 1]
        if task.params.mode == "topk":
            ids, values = topk[b]
            result = SequenceLogits.from_dense(ids, values, token_host[lo:hi], tail_host[lo:hi])
            result.token_ranks = _ranks_of(ranks_host, task, lo, hi)
            results.append(result)
            continue
        row, ids, counts, values = (x.cpu().numpy() for x in sampled[b])
        results.append(
            SequenceLogits(
                row_lengths=np.bincount(row, minlength=task.num_rows),
                top_ids=ids,
                top_logprobs=values,
                token_logprobs=token_host[lo:hi],
                tail_logprobs=tail_host[lo:hi],
                counts=counts,
                token_ranks=_ranks_of(ranks_host, task, lo, hi),
            )
        )
    return results


def _token_ranks(
    logprobs: torch.Tensor, token_logprobs: torch.Tensor, tasks: Sequence[LogitsTask], offsets: list[int]
) -> np.ndarray | None:
    """(N,) int32 rank of the actual token in its row, #{j : logprob_j >= logprob(x[i])} (ties count as
    ahead, as vLLM counts them), for the rows of tasks that asked for it; None when none did."""
    wanted = [b for b, task in enumerate(tasks) if task.token_ranks]
    if not wanted:
        return None
    rows = torch.cat([torch.arange(offsets[b], offsets[b + 1], device=logprobs.device) for b in wanted])
    ranks = torch.zeros(len(logprobs), dtype=torch.int32, device=logprobs.device)
    ranks[rows] = (logprobs[rows] >= token_logprobs[rows, None]).sum(dim=-1).to(torch.int32)
    return ranks.cpu().numpy()


def _ranks_of(ranks: np.ndarray | None, task: LogitsTask, lo: int, hi: int) -> np.ndarray | None:
    return ranks[lo:hi] if ranks is not None and task.token_ranks else None
