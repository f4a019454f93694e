"""Token-level distillation from sparse teacher rows (top-k ids + tail, or sampled ids + counts).

    sparse_kd_loss(student_logits, teacher, divergence, ...)     mean over valid tokens
      └── _SparseKD (autograd.Function; recomputes in backward)
            ├── _student_buckets   one [chunk, V] buffer -> student log-probs of the k ids + tail bucket
            └── divergences.divergence / sampled_forward_kl     on the small (chunk, k + 1) tensors
    SparseKDLoss                                                 nn.Module with the configuration fixed

The (k + 1)-bucket coarsening. A teacher row knows p at its ids S (|S| <= k) and the leftover mass
p_tail = 1 - sum_S p. The student is coarsened the same way: q_j = softmax(z)_j for j in S and
q_tail = sum_{v not in S} softmax(z)_v, computed as exp(logsumexp_{v not in S} z_v - logsumexp_v z_v) —
a logsumexp over the complement, so a tail of 1e-9 (or 1e-30) keeps full relative precision where
log1p(-sum_S q) would cancel to 0. When S is the whole vocabulary (tail = -inf) the coarsening is the
identity and every divergence equals its full-vocabulary value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dualdistill.bounds import check_choice, check_range
from dualdistill.losses.divergences import DIVERGENCES, divergence, sampled_forward_kl
from dualdistill.losses.logprobs import DEFAULT_CHUNK_SIZE, compute_dtype
from dualdistill.teacher_logits import TeacherLogits

__all__ = ["DIVERGENCES", "KD_REDUCTIONS", "SparseKDLoss", "sparse_kd_loss"]

# token: mean over all valid tokens; sequence: mean over each sequence's valid tokens, then over the
# sequences that have any (DistiLLM-2's reduction)
KD_REDUCTIONS = ("token", "sequence")

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class _KDSpec:
    divergence: str
    alpha: float
    beta: float
    temperature: float
    chunk_size: int


def check_kd_args(divergence: str, temperature: float, alpha: float, beta: float, chunk_size: int) -> None:
    check_choice("divergence", divergence, DIVERGENCES)
    check_range("temperature", temperature, 0.0, low_open=True)
    check_range("alpha", alpha, 0.0, 1.0, high_open=True)
    check_range("beta", beta, 0.0, 1.0)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an int >= 1")


def row_weights(keep: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor | None:
    """(N,) weight of each valid row of keep (B, L), in flat order, so that sum_j w_j D_j is the reduction.

    None for "token" (the plain mean, sum / N); for "sequence" w_j = 1 / (n_b * S), n_b the valid rows of
    row j's sequence and S the number of sequences with n_b > 0.
    """
    check_choice("reduction", reduction, KD_REDUCTIONS)
    if reduction == "token":
        return None
    counts = keep.sum(1)  # (B,)
    sequences = (counts > 0).sum().clamp(min=1)
    per_seq = 1.0 / (counts.clamp(min=1).to(dtype) * sequences.to(dtype))  # (B,)
    return per_seq[:, None].expand_as(keep).reshape(-1)[keep.reshape(-1)]


def _student_buckets(
    logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student log-probs over a chunk's buckets, from one [c, V] buffer (`buckets_of` on rows `rows`).

    Args: logits (N_all, V) flat student logits; rows (c,) which of them; ids (c, k) teacher ids; valid
        (c, k) True for real entries (padding excluded).
    """
    # the chunk's [c, V] buffer: index_select always returns a fresh tensor, so the in-place ops in
    # buckets_of never touch the caller's logits (half-precision rows are upcast into a second, freed at once)
    return buckets_of(logits.index_select(0, rows).to(compute_dtype(logits.dtype)), ids, valid, temperature)


def buckets_of(
    z: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student log-probs over the buckets of rows z (c, V), a buffer of the caller's that is overwritten.

    Returns: lq (c, k + 1) = [log q_ids (-inf on padding), log q_tail]; comp (c, V) = exp(z - max of the
        complement) on the complement and 0 on the ids (z's storage); comp_sum (c,) its row sums (0 if the
        complement is empty).
    """
    lq, comp, comp_sum, _ = buckets_and_lse(z, ids, valid, temperature)
    return lq, comp, comp_sum


def buckets_and_lse(
    z: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`buckets_of`, plus lse (c,) = logsumexp(z / T) over the whole vocabulary (ids + complement)."""
    if temperature != 1.0:
        z.div_(temperature)
    z_ids = z.gather(1, ids).masked_fill(~valid, _NEG_INF)  # (c, k)
    # knock the valid ids out, leaving the tail bucket: min(z, -inf) there, min(z, +inf) = z for padding.
    # amin is order-free, so a padding id that repeats a valid id cannot undo it (as a plain scatter could).
    knock = torch.where(valid, _NEG_INF, float("inf")).to(z.dtype)
    z.scatter_reduce_(1, ids, knock, reduce="amin", include_self=True)
    top = z.amax(1)  # (c,), -inf when the ids cover the vocabulary
    top = torch.where(torch.isfinite(top), top, 0.0)
    comp = z.sub_(top[:, None]).exp_()  # in place: exp(z - top), 0 on the ids
    comp_sum = comp.sum(1)  # >= 1 unless the complement is empty, so its log never underflows
    lse_comp = top + comp_sum.log()
    lse = torch.logaddexp(torch.logsumexp(z_ids, 1), lse_comp)  # logsumexp over ids + complement
    lq = torch.cat([z_ids - lse[:, None], (lse_comp - lse)[:, None]], dim=1)
    return lq, comp, comp_sum, lse


def _row_loss(
    spec: _KDSpec, lp: torch.Tensor, lq: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-row loss on the (c, k + 1) buckets; `weights` (c, k) are counts / N in sampled mode."""
    if weights is not None:
        return sampled_forward_kl(weights, lp[:, :-1], lq[:, :-1])
    return divergence(spec.divergence, lp, lq, alpha=spec.alpha, beta=spec.beta)


def bucket_grad_(
    spec: _KDSpec,
    teacher_lp: torch.Tensor,
    lq: torch.Tensor,
    buffer: torch.Tensor,
    comp_sum: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None,
    scale: torch.Tensor | None = None,
    lse_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """d (sum of the chunk's row losses) / d z into `buffer` (c, V) in place (closed form of _SparseKD).

    With scale (c,) the row losses are weighted, sum_r scale_r D_r; with lse_grad (c,) the gradient of
    sum_r lse_grad_r * logsumexp(z_r) is added, lse_grad_r * softmax(z_r) — valid only at temperature 1,
    where softmax(z) is q itself: q_v on the ids and (q_v / q_tail) q_tail on the complement, i.e. the
    closed form below with G replaced by G - lse_grad (one pass serves the DPO log-probs and the KD term).
    """
    lq = lq.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(_row_loss(spec, teacher_lp, lq, weights).sum(), lq)
    if scale is not None:
        g = g * scale[:, None]
    q = lq.detach().exp()  # (c, k + 1)
    big_g = g.sum(1, keepdim=True)  # (c, 1)
    if lse_grad is not None:
        big_g = big_g - lse_grad[:, None]
    g_tail, q_tail = g[:, -1:], q[:, -1:]
    # complement: q_v / q_tail = buffer / comp_sum (buffer is 0 on the ids and when empty)
    buffer.div_(torch.where(comp_sum > 0, comp_sum, 1.0)[:, None]).mul_(g_tail - big_g * q_tail)
    # the buffer is exactly 0 at the ids, so adding writes them; padding adds 0
    on_ids = torch.where(valid, g[:, :-1] - big_g * q[:, :-1], 0.0)  # (c, k)
    return buffer.scatter_add_(1, ids, on_ids)


class _SparseKD(torch.autograd.Function):
    """Sum over the selected rows of the bucket divergence, chunk by chunk; backward recomputes.

    Why a custom Function rather than autograd through each chunk: autograd would keep every chunk's
    [c, V] intermediates alive until backward, i.e. O(N * V) extra memory — the very thing chunking is
    for. Forward keeps nothing but references to its inputs; backward redoes one chunk at a time and
    writes that chunk's gradient straight into the logits' gradient, using the closed form

        d f / d z_v = g_v - G q_v                               v in S
        d f / d z_v = (q_v / q_tail) * (g_tail - G q_tail)      v not in S
        with g = d f / d(log q) on the k + 1 buckets (autograd on the small tensors), G = sum of g,

    so the only [c, V] temporary is the `_student_buckets` buffer (and, for half-precision logits, the
    rows it is upcast from), reused for the gradient; q_v / q_tail is read off that buffer (no division
    by a tiny q_tail). The price is a second pass over the logits.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,  # (N_all, V)
        rows: torch.Tensor,  # (N,) int64
        ids: torch.Tensor,  # (N, k) int64
        teacher_lp: torch.Tensor,  # (N, k + 1) compute dtype, tail last
        weights: torch.Tensor | None,  # (N, k) or None
        spec: _KDSpec,
        row_w: torch.Tensor | None = None,  # (N,) per-row weights of the sum, None = 1
    ) -> torch.Tensor:
        valid = teacher_lp[:, :-1] > _NEG_INF if weights is None else weights > 0
        total = torch.zeros((), dtype=compute_dtype(logits.dtype), device=logits.device)
        for start in range(0, rows.shape[0], spec.chunk_size):
            part = slice(start, start + spec.chunk_size)
            lq, _, _ = _student_buckets(logits, rows[part], ids[part], valid[part], spec.temperature)
            w = None if weights is None else weights[part]
            per_row = _row_loss(spec, teacher_lp[part], lq, w)
            total = total + (per_row.sum() if row_w is None else (per_row * row_w[part]).sum())
        ctx.save_for_backward(logits, rows, ids, teacher_lp, valid, weights, row_w)
        ctx.spec = spec
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        logits, rows, ids, teacher_lp, valid, weights, row_w = ctx.saved_tensors
        spec: _KDSpec = ctx.spec
        grad_logits = torch.zeros_like(logits)
        scale = grad_total / spec.temperature  # z = logits / T
        for start in range(0, rows.shape[0], spec.chunk_size):
            part = slice(start, start + spec.chunk_size)
            lq, buffer, comp_sum = _student_buckets(
                logits, rows[part], ids[part], valid[part], spec.temperature
            )
            w = None if weights is None else weights[part]
            bucket_grad_(spec, teacher_lp[part], lq, buffer, comp_sum, ids[part], valid[part], w)
            buffer.mul_(scale)
            if row_w is not None:
                buffer.mul_(row_w[part, None])
            grad_logits.index_copy_(0, rows[part], buffer.to(logits.dtype))
        return grad_logits, None, None, None, None, None, None


def teacher_rows(
    teacher: TeacherLogits, rows: torch.Tensor, dtype: torch.dtype, vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The teacher's flat rows `rows`: ids (N, k) int64, [logprobs, tail] (N, k + 1) and, in sampled mode,
    the weights c_j / N (N, k)."""
    ids = teacher.ids.reshape(-1, teacher.k).index_select(0, rows).long()
    if ids.numel() and bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(
            f"teacher ids must lie in [0, V={vocab}); got ids in [{int(ids.min())}, {int(ids.max())}]"
        )
    teacher_lp = torch.cat(
        [
            teacher.logprobs.reshape(-1, teacher.k).index_select(0, rows),
            teacher.tail.reshape(-1).index_select(0, rows)[:, None],
        ],
        dim=1,
    ).to(dtype)
    weights = None
    if teacher.counts is not None:
        counts = teacher.counts.reshape(-1, teacher.k).index_select(0, rows).to(dtype)
        weights = counts / counts.sum(1, keepdim=True).clamp(min=1)  # c_j / N per row
    return ids, teacher_lp, weights


def sparse_kd_loss(
    student_logits: torch.Tensor,
    teacher: TeacherLogits,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    alpha: float = 0.1,
    beta: float = 0.5,
    scale_by_temperature_squared: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    mask: torch.Tensor | None = None,
    reduction: str = "token",
) -> torch.Tensor:
    """Mean over valid tokens of D(teacher row || student) on the (k + 1)-bucket coarsening.

        loss = (T^2 if scale_by_temperature_squared) * sum_{valid j} D(p_j, q_j) / #valid
        q_j  = softmax(student_logits[b, j] / T), coarsened to the row's ids + tail (module docstring)

    Top-k teacher batches: D is `divergence` (see `dualdistill.losses.divergences`): forward_kl,
    reverse_kl, skew_forward_kl (alpha), skew_reverse_kl / skew_reverse_kl_full (alpha), jsd (beta). With k = V (tail -inf) it
    equals the full-vocabulary divergence. Sampled teacher batches (teacher.counts set; rows are the
    unique ids of N draws from p): the unbiased estimator of Anshumann et al., ACL 2025,
        D = -sum_j (c_j / N) log q_j + sum_j (c_j / N) log p_j,
    whose expectation is KL(p || q) and whose gradient wrt z is q - c / N (unbiased for q - p). Only
    divergence="forward_kl" has such an estimator; others raise ValueError.

    Args:
        student_logits: (B, L, V) any float dtype, aligned with `teacher` (index j predicts token j + 1);
            computed in float32 (float64 stays float64), gradient returned in its dtype.
        teacher: TeacherLogits with (B, L, k) rows; the teacher's temperature is the server's.
        temperature: divides the student logits only.
        chunk_size: rows per [chunk, V] temporary; memory beyond the logits and their gradient is one
            such buffer plus (chunk, k)-sized tensors, independent of B * L.
        mask: optional (B, L) bool, intersected with teacher.mask (e.g. response positions).
        reduction: "token" (the mean over valid tokens above) or "sequence": each sequence's mean over
            its valid tokens, then the mean over the sequences that have any (DistiLLM-2).
    Returns:
        scalar (float32, or float64 for float64 logits); 0 with a zero gradient when no row is valid.
    """
    check_kd_args(divergence, temperature, alpha, beta, chunk_size)
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, L, V), got shape {tuple(student_logits.shape)}")
    b, length, vocab = student_logits.shape
    if (teacher.batch_size, teacher.seq_len) != (b, length):
        raise ValueError(
            f"teacher rows (B, L) = {(teacher.batch_size, teacher.seq_len)} do not match student logits "
            f"(B, L) = {(b, length)}; build TeacherLogits with seq_len={length} (index j predicts token j + 1)"
        )
    if teacher.is_sampled and divergence != "forward_kl":
        raise ValueError(
            f"divergence={divergence!r} has no unbiased estimator for a sampled teacher batch "
            "(teacher.counts is set); use divergence='forward_kl' or request mode='topk'"
        )
    if teacher.device != student_logits.device:
        raise ValueError(
            f"teacher is on {teacher.device}, student logits on {student_logits.device}; use teacher.to()"
        )
    keep = teacher.mask if mask is None else teacher.mask & mask.to(torch.bool)
    rows = keep.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of valid positions
    ids, teacher_lp, weights = teacher_rows(teacher, rows, compute_dtype(student_logits.dtype), vocab)
    spec = _KDSpec(divergence, alpha, beta, temperature, chunk_size)
    row_w = row_weights(keep, reduction, compute_dtype(student_logits.dtype))
    total = _SparseKD.apply(student_logits.reshape(-1, vocab), rows, ids, teacher_lp, weights, spec, row_w)
    loss = total / max(rows.numel(), 1) if row_w is None else total
    if scale_by_temperature_squared:
        loss = loss * temperature**2
    return loss


class SparseKDLoss(nn.Module):
    """`sparse_kd_loss` with its configuration fixed (and validated) at construction."""

    def __init__(
        self,
        divergence: str = "forward_kl",
        temperature: float = 1.0,
        alpha: float = 0.1,
        beta: float = 0.5,
        scale_by_temperature_squared: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        check_kd_args(divergence, temperature, alpha, beta, chunk_size)
        self.divergence, self.temperature, self.alpha, self.beta = divergence, temperature, alpha, beta
        self.scale_by_temperature_squared, self.chunk_size = scale_by_temperature_squared, chunk_size

    def forward(
        self, student_logits: torch.Tensor, teacher: TeacherLogits, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return sparse_kd_loss(
            student_logits,
            teacher,
            divergence=self.divergence,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            scale_by_temperature_squared=self.scale_by_temperature_squared,
            chunk_size=self.chunk_size,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"divergence={self.divergence!r}, temperature={self.temperature}, alpha={self.alpha}, "
            f"beta={self.beta}, chunk_size={self.chunk_size}"
        )
