"""The DPD loss from the student's last hidden states and LM head, never holding the (2B, L, V) logits.

    fused_dpd_loss(hidden (2B, L, H), weight (V, H), bias (V,) | None, DPDBatch, config) -> DPDLossOutput
      └── _FusedDPD (autograd.Function), the response rows sorted by term (DPO only, KD(pos), KD(neg)) and
          cut into chunks of `chunk_rows(config, V)` rows (<= fused_chunk_mib MiB each), one term a chunk:
            z = hidden[rows] @ weight.T + bias          into ONE reused [chunk, V] fp32 buffer
            ├── z[label] - logsumexp(z)                 per row, for the DPO sequence log-probs (w_dpo > 0)
            └── buckets_and_lse(z / T) + divergence     per row, summed per side (KD(pos), KD(neg))
          backward recomputes z into the same buffer and overwrites it with
            dL/dz = g_logp * (onehot(label) - softmax(z)) + closed-form KD gradient (sparse_kd.bucket_grad_)
            (at T = 1 softmax(z) is the KD's own q, so both terms come out of one pass over the buffer)
            dL/dhidden[rows] = dL/dz @ weight,  dL/dweight += dL/dz.T @ hidden[rows] (in place),
            dL/dbias += sum dL/dz
      then the same DPO and weighting as `dpd_loss` (dpd.combine_terms) on the (2B,) sequence log-probs.

Why: the logits and their gradient are the floor of every loss that takes logits (two (2B, L, V)
float32 tensors: ~5 GB for one pair of 2,048 tokens at V = 151,936). Here the peak beyond the inputs and
the parameter gradient is one [chunk, V] buffer (a second only at temperature != 1 with a DPO term),
independent of L (Liger-Kernel's fused linear losses do the same). The price: the LM-head matmul runs
twice forward (once more in backward) — 4 matmuls instead of 3. Values and gradients equal
`dpd_loss(hidden @ weight.T + bias, ...)` (tests: float64, every divergence and preset, masks,
temperature, sampled rows, k = V, one-row chunks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dualdistill.losses.dpd import DPDBatch, DPDLossConfig, DPDLossOutput, check_inputs, combine_terms
from dualdistill.losses.logprobs import compute_dtype
from dualdistill.losses.sparse_kd import (
    _KDSpec,
    _row_loss,
    bucket_grad_,
    buckets_and_lse,
    row_weights,
    teacher_rows,
)

__all__ = ["fused_dpd_loss"]

_NONE, _POS, _NEG = 0, 1, 2  # which KD term a row belongs to


class _FusedDPD(torch.autograd.Function):
    """(hidden rows, LM head) -> (per-row log q(label) (N,), KD(pos) sum, KD(neg) sum); recomputes in backward.

    The rows arrive sorted by side (_NONE, _POS, _NEG), so every chunk belongs to one term and its [c, V]
    buffer is used in place: one such buffer per chunk in forward and, at temperature 1, in backward.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,  # (N_all, H)
        weight: torch.Tensor,  # (V, H)
        bias: torch.Tensor | None,  # (V,)
        rows: torch.Tensor,  # (N,) int64, flat indices into hidden, sorted by side
        labels: torch.Tensor,  # (N,) int64
        side_counts: tuple[int, int, int],  # rows of _NONE, _POS, _NEG, in this order
        ids: torch.Tensor,  # (N, k)
        teacher_lp: torch.Tensor,  # (N, k + 1)
        weights: torch.Tensor | None,  # (N, k) sampled mode, else None
        specs: tuple[_KDSpec | None, _KDSpec | None],  # (pos, neg)
        need_logps: bool,
        chunk_size: int,
        row_w: torch.Tensor | None = None,  # (N,) KD weight of each row (sequence reduction), None = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(hidden.dtype)
        valid = teacher_lp[:, :-1] > float("-inf") if weights is None else weights > 0
        logps = torch.zeros(rows.shape[0], dtype=dtype, device=hidden.device)
        lse = torch.zeros_like(logps)
        totals = [torch.zeros((), dtype=dtype, device=hidden.device) for _ in range(2)]
        for part, spec, z in _chunks(hidden, weight, bias, rows, side_counts, specs, chunk_size, dtype):
            if need_logps:
                logps[part] = z.gather(1, labels[part, None]).squeeze(1)
                if spec is None or spec.temperature != 1.0:
                    lse[part] = _logsumexp_rows(z)
            if spec is not None:
                w = None if weights is None else weights[part]
                lq, _, _, lse_t = buckets_and_lse(z, ids[part], valid[part], spec.temperature)  # z overwritten
                if need_logps and spec.temperature == 1.0:
                    lse[part] = lse_t
                per_row = _row_loss(spec, teacher_lp[part], lq, w)
                term = _term_of(part, side_counts)
                totals[term] = totals[term] + (per_row if row_w is None else per_row * row_w[part]).sum()
        if need_logps:
            logps.sub_(lse)
        ctx.save_for_backward(hidden, weight, bias, rows, labels, ids, teacher_lp, valid, weights, lse, row_w)
        ctx.specs, ctx.need_logps, ctx.chunk_size, ctx.side_counts = specs, need_logps, chunk_size, side_counts
        return logps, totals[0], totals[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps: torch.Tensor, grad_pos: torch.Tensor, grad_neg: torch.Tensor):
        hidden, weight, bias, rows, labels, ids, teacher_lp, valid, weights, lse, row_w = ctx.saved_tensors
        dtype = compute_dtype(hidden.dtype)
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        # the parameter gradients accumulate over chunks in the compute dtype (fp32 for bf16 weights)
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if want_bias else None
        upstream = (grad_pos, grad_neg)
        chunks = _chunks(hidden, weight, bias, rows, ctx.side_counts, ctx.specs, ctx.chunk_size, dtype)
        for part, spec, z in chunks:
            g = grad_logps[part].to(dtype) if ctx.need_logps else None  # (c,) upstream of log q(label)
            if spec is None:  # DPO rows only: d log softmax(z)[y] / dz = onehot(y) - softmax(z), in place
                z.sub_(lse[part, None]).exp_().mul_(-g[:, None])
            else:
                term = _term_of(part, ctx.side_counts)
                scale = (upstream[term].to(dtype) / spec.temperature).expand(part.stop - part.start)
                if row_w is not None:
                    scale = scale * row_w[part]
                fold = g is not None and spec.temperature == 1.0  # softmax(z) is the KD's q: one buffer
                softmax_part = z.clone() if g is not None and not fold else None  # z before buckets_and_lse
                w = None if weights is None else weights[part]
                lq, _, comp_sum, _ = buckets_and_lse(z, ids[part], valid[part], spec.temperature)
                bucket_grad_(
                    spec, teacher_lp[part], lq, z, comp_sum, ids[part], valid[part], w,
                    scale=scale, lse_grad=-g if fold else None,
                )  # fmt: skip
                if softmax_part is not None:
                    z.sub_(softmax_part.sub_(lse[part, None]).exp_().mul_(g[:, None]))
                    del softmax_part
            grad_z = z  # (c, V): dL/dz of the chunk
            if g is not None:
                grad_z.scatter_add_(1, labels[part, None], g[:, None])
            h = hidden.index_select(0, rows[part])
            if grad_hidden is not None:
                grad_hidden.index_add_(0, rows[part], (grad_z.to(weight.dtype) @ weight).to(hidden.dtype))
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.T, h.to(dtype))
            if grad_bias is not None:
                grad_bias.add_(grad_z.sum(0))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, *([None] * 10)


def _term_of(part: slice, side_counts: tuple[int, int, int]) -> int:
    """0 (pos) or 1 (neg): the KD term of a chunk of side-sorted rows past the _NONE rows."""
    return 0 if part.start < side_counts[0] + side_counts[1] else 1


def _chunks(hidden, weight, bias, rows, side_counts, specs, chunk_size, dtype):
    """(slice of rows, the chunk's KD spec or None, z (c, V) in the compute dtype) per chunk.

    Chunks never straddle two sides. Every z is a view of ONE [chunk_size, V] buffer, which the caller may
    overwrite but must be done with before the next chunk: a buffer reused, not allocated per chunk, costs
    its page faults (CPU) or allocator round trips once per call instead of once per chunk.
    """
    buffer = torch.empty(min(chunk_size, rows.shape[0]), weight.shape[0], dtype=dtype, device=hidden.device)
    start = 0
    for side, count in enumerate(side_counts):
        spec = None if side == _NONE else specs[side - 1]
        for first in range(start, start + count, chunk_size):
            part = slice(first, min(first + chunk_size, start + count))
            h, z = hidden.index_select(0, rows[part]), buffer[: part.stop - part.start]
            if weight.dtype == dtype and h.dtype == dtype:
                if bias is None:
                    torch.mm(h, weight.T, out=z)
                else:
                    torch.addmm(bias.to(dtype), h, weight.T, out=z)
            else:  # a half-precision head: its matmul in its dtype, upcast into the buffer
                z.copy_(F.linear(h.to(weight.dtype), weight, bias))
            yield part, spec, z
        start += count


def _logsumexp_rows(z: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """logsumexp over the last dim of z (c, V), over column blocks: (c, block) temporaries, never (c, V)."""
    parts = [torch.logsumexp(z[:, i : i + block], dim=1) for i in range(0, z.shape[1], block)]
    return torch.logsumexp(torch.stack(parts, dim=1), dim=1)


def chunk_rows(config: DPDLossConfig, vocab: int, dtype: torch.dtype) -> int:
    """Rows per chunk: config.chunk_size, fewer when one [rows, V] buffer would pass config.fused_chunk_mib."""
    row_bytes = vocab * torch.tensor([], dtype=dtype).element_size()
    return max(1, min(config.chunk_size, int(config.fused_chunk_mib * 2**20) // row_bytes))


def fused_dpd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    batch: DPDBatch,
    config: DPDLossConfig | None = None,
) -> DPDLossOutput:
    """`dpd_loss(F.linear(hidden, weight, bias), batch, config)` without the (2B, L, V) logits.

    Shapes: hidden (2B, L, H) the student's last hidden states (after the final norm), weight (V, H) and
    bias (V,) or None the LM head; batch a DPDBatch aligned with hidden's rows. config.chunk_size rows are
    projected at a time. Returns the same DPDLossOutput as dpd_loss (tensors only).
    """
    cfg = config if config is not None else DPDLossConfig()
    if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(batch.labels.shape):
        raise ValueError(
            f"hidden must be (2B, L, H) with (2B, L) = {tuple(batch.labels.shape)}, got {tuple(hidden.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be (V, H) with H = {hidden.shape[2]}, got {tuple(weight.shape)}")
    check_inputs(cfg, batch)
    vocab, (rows_all, length) = weight.shape[0], batch.labels.shape
    b, need_logps = batch.num_pairs, cfg.dpo_weight > 0
    flat_mask = batch.loss_mask.reshape(-1).to(torch.bool)
    chosen = (torch.arange(rows_all, device=hidden.device) < b)[:, None].expand(rows_all, length).reshape(-1)
    side = torch.zeros_like(flat_mask, dtype=torch.int8)
    specs: list[_KDSpec | None] = [None, None]
    if batch.teacher is not None:
        has_row = batch.teacher.mask.reshape(-1) & flat_mask
        for term, (weight_of, divergence, on_side) in enumerate(
            ((cfg.pos_weight, cfg.pos_divergence, chosen), (cfg.neg_weight, cfg.neg_divergence, ~chosen))
        ):
            if weight_of > 0:
                if batch.teacher.is_sampled and divergence != "forward_kl":
                    raise ValueError(
                        f"divergence={divergence!r} has no unbiased estimator for a sampled teacher batch "
                        "(teacher.counts is set); use divergence='forward_kl' or request mode='topk'"
                    )
                side = torch.where(has_row & on_side, term + 1, side).to(torch.int8)
                specs[term] = _KDSpec(divergence, cfg.alpha, cfg.jsd_beta, cfg.temperature, cfg.chunk_size)
    used = flat_mask if need_logps else side > 0
    rows = used.nonzero().squeeze(1)  # (N,) the rows any term reads
    row_side = side.index_select(0, rows).long()
    rows = rows.index_select(0, torch.sort(row_side, stable=True).indices)  # sorted by side: one term a chunk
    side_counts = tuple(torch.bincount(row_side, minlength=3).tolist())
    dtype = compute_dtype(hidden.dtype)
    if batch.teacher is not None:
        ids, teacher_lp, weights = teacher_rows(batch.teacher, rows, dtype, vocab)
    else:
        ids = torch.zeros(rows.shape[0], 1, dtype=torch.long, device=hidden.device)
        teacher_lp = torch.zeros(rows.shape[0], 2, dtype=dtype, device=hidden.device)
        weights = None
    labels = batch.labels.reshape(-1).index_select(0, rows).long().clamp(min=0)
    row_w = None
    if cfg.kd_reduction != "token" and any(spec is not None for spec in specs):
        # each side's rows weighted as sparse_kd_loss weighs them, placed at the rows any term reads
        flat_w = torch.zeros(rows_all * length, dtype=dtype, device=hidden.device)
        for term, on_side in enumerate((chosen, ~chosen)):
            if specs[term] is not None:
                keep = (side == term + 1) & on_side
                side_w = row_weights(keep.view(rows_all, length), cfg.kd_reduction, dtype)
                flat_w[keep] = side_w
        row_w = flat_w.index_select(0, rows)
    row_logps, pos_total, neg_total = _FusedDPD.apply(
        hidden.reshape(-1, hidden.shape[2]), weight, bias, rows, labels, side_counts,
        ids, teacher_lp, weights, tuple(specs), need_logps, chunk_rows(cfg, vocab, dtype), row_w,
    )  # fmt: skip
    policy = None
    if need_logps:
        per_row = torch.zeros(rows_all * length, dtype=row_logps.dtype, device=hidden.device)
        policy = per_row.index_add(0, rows, row_logps).view(rows_all, length).sum(-1)  # (2B,)
        if cfg.length_normalize:
            policy = policy / batch.loss_mask.sum(-1).clamp(min=1)
    kd: dict[str, torch.Tensor] = {}
    scale = cfg.temperature**2 if cfg.scale_by_temperature_squared else 1.0
    for term, (name, total) in enumerate((("pos", pos_total), ("neg", neg_total))):
        if specs[term] is not None:
            if row_w is None:
                count = int((side == term + 1).sum())
                total = total / max(count, 1)
            kd[name] = total * scale if scale != 1.0 else total
    return combine_terms(cfg, batch, policy, kd, hidden.device)
