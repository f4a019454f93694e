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

import functools
import math

import numpy as np

from dualdistill.protocol.wire import kernels, scratch

DEFAULT_TARGET_KL = 9e-5  # mean nats per row, checked on the data by `choose_levels` (acceptance bound 1e-4)
MAX_LEVELS = 1 << 20
_CALIBRATION_STEPS = 2  # rescalings of M by the KL measured on a subsample
_SAMPLE_ENTRIES = 1 << 14  # subsample size for the rescalings
_BUMP_STEPS = 80  # increases of M (by >= 1%) while the KL on all entries is above target
_CACHED_LEVELS = 1 << 14  # `_decoded` keeps the per-level tables of M up to this (<= 256 KiB each)
_EXP_UNDERFLOW = -740.0  # exp(x) > 0 in float64 for every x above this (it underflows to 0 below ~-745.1)
_ROOT_SLACK = 1e-12  # relative margin of `_Entries.levels` around sqrt(exp(x)) ~ exp(x / 2)


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


def dequantized(level: np.ndarray, levels: int) -> np.ndarray:
    """`dequantize(level, levels)` read from the table of every level's value (`_level_values`) for the M
    of ordinary payloads: one logarithm per level of M instead of one per tie group of a payload."""
    if levels > _CACHED_LEVELS:
        return dequantize(level, levels)
    return _level_values(levels)[level]


def _level_values(levels: int) -> np.ndarray:
    """dequantize(arange(M), M) (M,) float32, read-only; cached for the M of ordinary payloads (they repeat
    from one payload to the next). The decoder reads its values from it, the KL search its (log q, q)."""
    return _level_values_cached(levels) if levels <= _CACHED_LEVELS else _level_table(levels)


def _level_table(levels: int) -> np.ndarray:
    table = dequantize(np.arange(levels), levels)
    table.flags.writeable = False
    return table


_level_values_cached = functools.lru_cache(maxsize=64)(_level_table)


class _Entries:
    """The exact logprobs of a payload as the KL search needs them, each computed once: p = exp(log_p)
    and approx_root = sqrt(p) (float64, (N,)); approx_root equals `quantize`'s exp(log_p / 2) to within a
    few ulps. `levels(M)` is `quantize(logprobs, M)` bit for bit without a second exp: the floor of
    approx_root * M is taken at both ends of a relative margin _ROOT_SLACK (about 10**3 times the worst
    error of exp and sqrt together); only the entries whose ends disagree (a product within ~1e-12 of an
    integer: practically none) are quantized with the exact exp. -inf gives p = 0 and level 0, as in
    `quantize`. `constant` is sum(p * ln p) - sum(p) over the entries with p > 0, the KL's q-free part.

    The full-size arrays live in scratch buffers (scratch.py) named after `role` and are filled block by
    block; they stay valid until the next _Entries of the same role on this thread.
    """

    def __init__(self, logprobs: np.ndarray, role: str = "full"):
        n = len(logprobs)
        self.logprobs = logprobs
        self.p = scratch.array(f"{role}.p", n, np.float64)
        self.approx_root = scratch.array(f"{role}.root", n, np.float64)
        self._level = scratch.array(f"{role}.level", n, np.int64)
        plogp = self._level.view(np.float64)  # p ln p shares the levels' buffer: it is summed first
        for b in scratch.blocks(n):
            log_p = logprobs[b].astype(np.float64)
            p = np.exp(log_p, out=self.p[b])
            np.sqrt(p, out=self.approx_root[b])
            if log_p.size and log_p.min() > _EXP_UNDERFLOW:  # every p > 0 (the usual case)
                np.multiply(p, log_p, out=plogp[b])
            else:  # p = 0 entries (-inf, or exp underflow) contribute 0 here, not 0 * -inf = nan
                np.multiply(p, np.where(p > 0, log_p, 0.0), out=plogp[b])
        # Sums over the whole arrays (numpy's pairwise order), as a plain (p * ...).sum() - p.sum().
        self.constant = float(plogp.sum() - self.p.sum())  # p = 0 entries contribute q only

    def levels_view(self) -> np.ndarray:
        """The scratch view the latest `levels` call filled."""
        return self._level

    def level_totals(self, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(levels(M) (N,) int64 (the scratch view), mass (M,) = bincount(level, weights=p), count (M,) =
        bincount(level)): one compiled pass where the wire kernels are on (the same values; an entry
        whose level is unsure sends the call to numpy), else numpy's three."""
        if kernels.enabled():
            low_scale, high_scale = _scales(levels)
            mass, count, unsure = kernels.level_totals(self.approx_root, self.p, self._level, levels, low_scale,
                                                       high_scale)  # fmt: skip
            if not unsure:
                return self._level, mass, count
        level = self.levels(levels)
        return level, np.bincount(level, weights=self.p, minlength=levels), np.bincount(level, minlength=levels)

    def levels(self, levels: int) -> np.ndarray:
        """(N,) int64 levels in [0, levels), equal to quantize(logprobs, levels); a scratch view."""
        low_scale, high_scale = _scales(levels)
        for b in scratch.blocks(len(self.p)):
            low = self.approx_root[b] * low_scale
            high = self.approx_root[b] * high_scale
            np.minimum(low, levels - 1, out=low)  # also maps +inf (log_p > 709) to the top level
            np.minimum(high, levels - 1, out=high)
            level = self._level[b]
            np.copyto(level, low, casting="unsafe")  # floor: both are >= 0
            unsure = np.flatnonzero(level != high.astype(np.int64))
            if unsure.size:
                level[unsure] = quantize(self.logprobs[b][unsure], levels)
        return self._level


def _scales(levels: int) -> tuple[float, float]:
    """M at both ends of the relative margin _ROOT_SLACK (`_Entries.levels`): one expression for both of
    its paths, so they scale the roots by the same floats."""
    return levels * (1.0 - _ROOT_SLACK), levels * (1.0 + _ROOT_SLACK)


def _decoded(levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(log q, q) per level (M,) float64, as a decoder reads them (float32 logprobs); read-only, cached
    for the M of ordinary payloads (they repeat from one payload to the next)."""
    return _decoded_cached(levels) if levels <= _CACHED_LEVELS else _decoded_values(levels)


def _decoded_values(levels: int) -> tuple[np.ndarray, np.ndarray]:
    log_q = _level_values(levels).astype(np.float64)
    q = np.exp(log_q)
    log_q.flags.writeable = q.flags.writeable = False
    return log_q, q


_decoded_cached = functools.lru_cache(maxsize=64)(_decoded_values)


def _kl_of(entries: _Entries, n_rows: float):
    """A function M -> (mean over rows of KL(exact || quantized) over the entries (tails are exact),
    the entries' levels at M): KL = sum_e [p_e (ln p_e - ln q_e) - p_e + q_e] / n_rows,
    q_e = exp(dequantize(quantize(logprob_e, M))). The q-dependent sums go through per-level totals (at
    most M distinct values of q)."""

    last: list = [None, None]  # (M, KL) of the latest call: its levels are still in the scratch view

    def kl(levels: int) -> tuple[float, np.ndarray]:
        if last[0] == levels:  # the search asks again for the M it just measured (it converged)
            return last[1], entries.levels_view()
        level, mass, count = entries.level_totals(levels)
        log_q, q = _decoded(levels)
        value = entries.constant - float(mass @ log_q) + float(count @ q)
        last[:] = levels, value / max(n_rows, 1e-300)
        return last[1], level

    return kl


def mean_kl(logprobs: np.ndarray, n_rows: int, levels: int) -> float:
    """Mean per-row KL(exact || quantized) of `logprobs` (N,) spread over `n_rows` rows at M = levels."""
    return _kl_of(_Entries(np.asarray(logprobs), "mean_kl"), n_rows)(levels)[0]


def _rescaled(levels: int, kl: float, target_kl: float) -> int:
    """The M that KL ~ C / M**2 predicts for the target."""
    return int(min(max(math.ceil(levels * math.sqrt(max(kl, 1e-300) / target_kl)), 1), MAX_LEVELS))


def choose_levels(logprobs: np.ndarray, n_rows: int, target_kl: float) -> int:
    """M for a mean per-row KL of at most `target_kl` on these exact logprobs (see `quantize_for_target`)."""
    return quantize_for_target(logprobs, n_rows, target_kl)[0]


def quantize_for_target(logprobs: np.ndarray, n_rows: int, target_kl: float) -> tuple[int, np.ndarray]:
    """(M, quantize(logprobs, M) (N,) int64, a scratch view: see scratch.py) for a mean per-row KL of at
    most `target_kl` on these exact (N,) float32 logprobs.

    KL(M) ~ C / M**2 holds to ~2%, so: the k / (6 M**2) estimate, rescaled twice by the KL of a strided
    subsample of the entries (cheap), then checked on all entries; while that is above the target, M
    grows by the predicted factor (at least 1%; bounded; M <= MAX_LEVELS). The levels of the last check
    are the answer's unless M grew after it.
    """
    n = len(logprobs)
    stride = max(1, n // _SAMPLE_ENTRIES)
    entries = _Entries(logprobs)
    full_kl = _kl_of(entries, n_rows)
    sample = logprobs[::stride]
    sample_kl = _kl_of(_Entries(sample, "sample"), n_rows * len(sample) / max(n, 1)) if stride > 1 else full_kl
    levels = levels_for(n / max(n_rows, 1), target_kl)
    for _ in range(_CALIBRATION_STEPS):
        levels = _rescaled(levels, sample_kl(levels)[0], target_kl)
    level, level_of = None, 0
    for _ in range(_BUMP_STEPS):
        kl, level = full_kl(levels)
        level_of = levels
        if kl <= target_kl or levels == MAX_LEVELS:
            break
        levels = min(MAX_LEVELS, max(_rescaled(levels, kl, target_kl), math.ceil(levels * 1.01)))
    return levels, (level if level_of == levels else entries.levels(levels))
