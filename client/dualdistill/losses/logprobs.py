"""Log-probabilities of chosen tokens, without a second [T, V] buffer.

selective_log_softmax(logits, index)          log softmax(logits)[index], (...,)
  └── _SelectiveLogSoftmax (autograd.Function: chunked logsumexp forward, softmax recomputed in backward)
sequence_logps(logits, labels, loss_mask)     sum over response rows of log q(label), (B,), all aligned
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["selective_log_softmax", "sequence_logps"]

DEFAULT_CHUNK_SIZE = 512


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses compute in: float64 stays float64, everything else is upcast to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log softmax(z)[index] for z (N, V), chunk by chunk.

    Why a custom Function: autograd through `logits.float().logsumexp()` would keep an fp32 copy of
    every chunk for backward (for half-precision logits: twice the logits' memory). Here forward keeps
    only the per-row logsumexp (N,), and backward recomputes softmax one [chunk, V] block at a time:
        d/dz_v log softmax(z)[y] = [v == y] - softmax(z)_v.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, chunk_size: int) -> torch.Tensor:
        dtype = compute_dtype(logits.dtype)
        lse = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
        for start in range(0, logits.shape[0], chunk_size):
            stop = start + chunk_size
            lse[start:stop] = torch.logsumexp(logits[start:stop].to(dtype), dim=-1)
        picked = logits.gather(-1, index[:, None]).squeeze(-1).to(dtype)
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk_size = chunk_size
        return picked - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, index, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            g = grad[start:stop, None].to(lse.dtype)  # (c, 1)
            # copy=True: the in-place ops below must never touch the saved logits
            block = logits[start:stop].to(lse.dtype, copy=True)  # (c, V)
            block.sub_(lse[start:stop, None]).exp_().mul_(-g)  # -g * softmax
            block.scatter_add_(-1, index[start:stop, None], g)
            grad_logits[start:stop] = block
        return grad_logits, None, None


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """log_softmax(logits, -1).gather(-1, index), never materialising the [T, V] log-softmax.

    Args:
        logits: (..., V) any float dtype; computed in float32 (float64 stays float64).
        index: (...) int64 token ids in [0, V).
        chunk_size: rows per [chunk, V] fp32 temporary.
    Returns:
        (...) log-probabilities, float32 (float64 for float64 logits).
    """
    if logits.dim() < 1 or tuple(index.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"index must have the shape of logits without the vocab dim: logits {tuple(logits.shape)}, "
            f"index {tuple(index.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vocab = logits.shape[-1]
    flat = _SelectiveLogSoftmax.apply(logits.reshape(-1, vocab), index.reshape(-1).long(), chunk_size)
    return flat.view(index.shape)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    length_normalize: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Summed (or mean) log-probability of each sequence's response tokens.

        logps[b] = sum_{j : loss_mask[b, j]} log softmax(logits[b, j])[labels[b, j]]   (/ sum_j loss_mask[b, j])

    All three are aligned with the logit rows (`dualdistill.losses.alignment.shift_labels`): logits
    (B, L, V), labels (B, L) the token each row predicts, loss_mask (B, L) the rows that count. Labels of
    rows outside the mask (e.g. IGNORE_INDEX) never reach the gather.

    Returns (B,) float32 (float64 for float64 logits); a sequence without response tokens scores 0.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, L, V), got shape {tuple(logits.shape)}")
    if tuple(labels.shape) != tuple(logits.shape[:2]) or tuple(loss_mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"labels and loss_mask must be (B, L) = {tuple(logits.shape[:2])}, got labels "
            f"{tuple(labels.shape)} and loss_mask {tuple(loss_mask.shape)}"
        )
    keep = loss_mask.to(torch.bool)
    targets = labels.long().masked_fill(~keep, 0)
    logps = selective_log_softmax(logits, targets, chunk_size)  # (B, L)
    total = torch.where(keep, logps, 0.0).sum(-1)
    if length_normalize:
        total = total / keep.sum(-1).clamp(min=1)
    return total
