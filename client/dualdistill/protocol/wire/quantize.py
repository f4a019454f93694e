"""Lossy quantizer: uniform steps in the sqrt(probability) domain, sized from a KL budget.

For a small log-prob error d_i on entry i, KL(p || q) ~= 1/2 * sum_i p_i * d_i**2 (the Fisher metric).
With s = sqrt(p), d(log p) = 2 ds / s, so p * d**2 = 4 ds**2: the KL cost of an error in s does not
depend on p. A uniform quantizer in s with step 1/M (error uniform in +-1/(2M)) therefore spends the
same KL on every entry, about 1/(6 M**2) each, which is the rate-optimal allocation:

    level      = min(floor(M * exp(logprob / 2)), M - 1)                     (integer in [0, M))
    logprob'   = 2 * ln((level + 1/2) / M)                                   (the bin centre, never p = 0)
    KL per row ~= k / (6 M**2)   =>   M = ceil(sqrt(k_mean / (6 * target_kl)))

On SmolLM2 (bench/wire_size.py --ablations) KL follows k / (6 M**2) to within 2% at k = 16..256, and a sweep of
companded steps t = s**gamma at equal KL has its minimum size at gamma ~= 1 (docs/wire-format.md).
The encoder does not rely on the estimate: `choose_levels` measures the KL of its own quantization on
the exact data and takes the smallest M whose mean KL is at most the target.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_TARGET_KL = 9e-5  # mean nats per row, checked on the data by `choose_levels` (acceptance bound 1e-4)
MAX_LEVELS = 1 << 20
_CALIBRATION_STEPS = 2  # rescalings of M by the KL measured on a subsample
_SAMPLE_ENTRIES = 1 << 14  # subsample size for the rescalings
_BUMP_STEPS = 80  # increases of M (by >= 1%) while the KL on all entries is above target


def levels_for(mean_row_length: float, target_kl: float) -> int:
    """M (levels per unit of sqrt-probability) for a mean KL of `target_kl` over rows of this length."""
    if not (math.isfinite(target_kl) and target_kl > 0):
        raise ValueError(f"target_kl must be finite and > 0, got {target_kl}")
    m = math.ceil(math.sqrt(max(mean_row_length, 1.0) / (6.0 * target_kl)))
    return int(min(max(m, 1), MAX_LEVELS))


def quantize(logprobs: np.ndarray, levels: int) -> np.ndarray:
    """(N,) float logprobs (<= 0; -inf allowed) -> (N,) int64 levels in [0, levels)."""
    root = np.exp(logprobs.astype(np.float64) * 0.5)  # sqrt(p); -inf -> 0
    return np.minimum(np.floor(root * levels), levels - 1).astype(np.int64)


def dequantize(level: np.ndarray, levels: int) -> np.ndarray:
    """(N,) int levels -> (N,) float32 logprobs at the bin centre: 2 * ln((level + 0.5) / levels)."""
    return (2.0 * (np.log(level.astype(np.float64) + 0.5) - math.log(levels))).astype(np.float32)


def _kl_of(logprobs: np.ndarray, n_rows: float):
    """A function M -> mean over rows of KL(exact || quantized) over the entries (tails are exact):
    sum_e [p_e (ln p_e - ln q_e) - p_e + q_e] / n_rows, q_e = exp(dequantize(quantize(logprob_e, M))).
    The q-dependent sums go through per-level totals (at most M distinct values of q)."""
    log_p = logprobs.astype(np.float64)
    p = np.exp(log_p)
    root = np.exp(log_p * 0.5)  # exactly as `quantize` computes it
    constant = float((p * np.where(p > 0, log_p, 0.0)).sum() - p.sum())  # p = 0 entries contribute q only

    def kl(levels: int) -> float:
        level = (root * levels).astype(np.int64)  # floor: root >= 0
        np.minimum(level, levels - 1, out=level)
        log_q = dequantize(np.arange(levels), levels).astype(np.float64)  # per level, as decoded (float32)
        mass = np.bincount(level, weights=p, minlength=levels)
        count = np.bincount(level, minlength=levels)
        return (constant - float(mass @ log_q) + float(count @ np.exp(log_q))) / max(n_rows, 1e-300)

    return kl


def mean_kl(logprobs: np.ndarray, n_rows: int, levels: int) -> float:
    """Mean per-row KL(exact || quantized) of `logprobs` (N,) spread over `n_rows` rows at M = levels."""
    return _kl_of(logprobs, n_rows)(levels)


def _rescaled(levels: int, kl: float, target_kl: float) -> int:
    """The M that KL ~ C / M**2 predicts for the target."""
    return int(min(max(math.ceil(levels * math.sqrt(max(kl, 1e-300) / target_kl)), 1), MAX_LEVELS))


def choose_levels(logprobs: np.ndarray, n_rows: int, target_kl: float) -> int:
    """M for a mean per-row KL of at most `target_kl` on these exact logprobs.

    KL(M) ~ C / M**2 holds to ~2%, so: the k / (6 M**2) estimate, rescaled twice by the KL of a strided
    subsample of the entries (cheap), then checked on all entries; while that is above the target, M
    grows by the predicted factor (at least 1%; bounded; M <= MAX_LEVELS).
    """
    n = len(logprobs)
    stride = max(1, n // _SAMPLE_ENTRIES)
    full_kl = _kl_of(logprobs, n_rows)
    sample_kl = (
        _kl_of(logprobs[::stride], n_rows * len(logprobs[::stride]) / max(n, 1)) if stride > 1 else full_kl
    )
    levels = levels_for(n / max(n_rows, 1), target_kl)
    for _ in range(_CALIBRATION_STEPS):
        levels = _rescaled(levels, sample_kl(levels), target_kl)
    for _ in range(_BUMP_STEPS):
        kl = full_kl(levels)
        if kl <= target_kl or levels == MAX_LEVELS:
            break
        levels = min(MAX_LEVELS, max(_rescaled(levels, kl, target_kl), math.ceil(levels * 1.01)))
    return levels
