"""Divergences between two distributions given as log-probabilities over the same buckets.

Each function maps teacher log-probs `lp` and student log-probs `lq`, both (N, K), to per-row values (N,).
In the sparse KD loss the K = k + 1 buckets are a teacher row's ids plus one tail bucket; here they are
just buckets. Entries of -inf are zero-probability buckets: every function is NaN-free in value and
gradient for them (0 * log 0 = 0), and infinite only where the divergence truly is (e.g. reverse KL
where the student has mass and the teacher none).

    P = exp(lp) (teacher), Q = exp(lq) (student)
    forward_kl          KL(P || Q)                       = sum P (log P - log Q)
    reverse_kl          KL(Q || P)
    skew_forward_kl     KL(P || a P + (1 - a) Q)         DistiLLM (Ko et al., ICML 2024), alpha = a
    skew_reverse_kl     KL(Q || (1 - a) P + a sg(Q))     DistiLLM-2 (Ko et al., ICML 2025): the student inside
                        the mixture is detached (sg = stop-gradient), as DistiLLM-2's trainer does; the value
                        equals skew_reverse_kl_full, the gradient flows only through Q's own terms
    skew_reverse_kl_full KL(Q || (1 - a) P + a Q)        DistiLLM (Ko et al., ICML 2024): differentiated
                        through the mixture too
    jsd                 b KL(P || M) + (1 - b) KL(Q || M), M = b P + (1 - b) Q   (generalised JSD, GKD,
                        Agarwal et al., ICLR 2024; beta = b). Ends as Liger's jsd: b = 0 gives KL(P || Q),
                        b = 1 gives KL(Q || P) (the limits of JSD_b / b and JSD_b / (1 - b)).
    sampled_forward_kl  sum_j w_j (log P_j - log Q_j) with w = counts / N: the unbiased random-sampling
                        estimate of KL(P || Q) (Anshumann et al., ACL 2025); gradient wrt student logits
                        q - w, unbiased for q - p.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DIVERGENCES", "divergence", "sampled_forward_kl"]

DIVERGENCES = ("forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "skew_reverse_kl_full", "jsd")

_NEG_INF = float("-inf")


def kl(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """sum_K a (log a - log b) over the last dim, with a = exp(la); buckets with a = 0 contribute 0."""
    has_mass = la > _NEG_INF
    # Masked entries get finite stand-ins BEFORE the arithmetic: where() alone would still send
    # 0 * inf = NaN back through the unselected branch.
    la_safe = torch.where(has_mass, la, 0.0)
    lb_safe = torch.where(has_mass, lb, 0.0)
    return torch.where(has_mass, la_safe.exp() * (la_safe - lb_safe), 0.0).sum(-1)


def log_mix(weight: float, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """log(weight * exp(la) + (1 - weight) * exp(lb)), elementwise, stable and NaN-free when both are -inf."""
    if weight == 0.0:
        return lb
    if weight == 1.0:
        return la
    empty = (la == _NEG_INF) & (lb == _NEG_INF)
    # logaddexp(-inf, -inf) has a NaN gradient; those buckets are masked out again below
    la = la.masked_fill(empty, 0.0)
    lb = lb.masked_fill(empty, 0.0)
    mixed = torch.logaddexp(la + math.log(weight), lb + math.log1p(-weight))
    return mixed.masked_fill(empty, _NEG_INF)


def divergence(
    name: str, lp: torch.Tensor, lq: torch.Tensor, alpha: float = 0.1, beta: float = 0.5
) -> torch.Tensor:
    """Per-row divergence `name` (one of DIVERGENCES) between teacher lp and student lq, both (N, K) -> (N,)."""
    if name == "forward_kl":
        return kl(lp, lq)
    if name == "reverse_kl":
        return kl(lq, lp)
    if name == "skew_forward_kl":
        return kl(lp, log_mix(alpha, lp, lq))
    if name == "skew_reverse_kl":  # DistiLLM-2: no gradient through the student inside the mixture
        return kl(lq, log_mix(alpha, lq.detach(), lp))
    if name == "skew_reverse_kl_full":
        return kl(lq, log_mix(alpha, lq, lp))
    if name == "jsd":
        if beta == 0.0:
            return kl(lp, lq)
        if beta == 1.0:
            return kl(lq, lp)
        mixture = log_mix(beta, lp, lq)
        return beta * kl(lp, mixture) + (1 - beta) * kl(lq, mixture)
    raise ValueError(
        f"divergence={name!r} is not supported; choose one of {', '.join(map(repr, DIVERGENCES))}"
    )


def sampled_forward_kl(weights: torch.Tensor, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """sum_K w (lp - lq) over the last dim, (N, K) -> (N,); buckets with w = 0 contribute 0."""
    drawn = weights > 0
    lp_safe = torch.where(drawn, lp, 0.0)
    lq_safe = torch.where(drawn, lq, 0.0)
    return torch.where(drawn, weights * (lp_safe - lq_safe), 0.0).sum(-1)
