"""Percentile bootstrap confidence intervals over held-out queries.

A metric is a ratio over queries: value = sum_q num_q / sum_q den_q (den_q = 1 for a plain mean, e.g.
accuracy; den_q = the query's response tokens for a per-token KL, so long answers weigh by their tokens
as in the point estimate). The bootstrap resamples QUERIES with replacement B times, recomputes the ratio
on each resample, and reports the (alpha/2, 1 - alpha/2) percentiles. Queries are the unit of sampling
because a new study would draw new queries; seeds are averaged per query before (`per_query_mean`).

`paired_difference` resamples the same query indices for two methods, so a difference is judged with the
query-to-query variation that both share removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    value: float
    low: float
    high: float
    n: int  # queries

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def separates_from(self, other: Interval) -> bool:
        """True when the two intervals do not overlap."""
        return self.low > other.high or other.low > self.high


def _check(num: np.ndarray, den: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    if num.ndim != 1 or den.shape != num.shape:
        raise ValueError(f"num and den must be 1-D of one length, got {num.shape} and {den.shape}")
    if num.size == 0:
        raise ValueError("a bootstrap needs at least one query")
    if np.any(den < 0) or den.sum() <= 0:
        raise ValueError("den must be >= 0 with a positive sum")
    return num, den


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) query indices drawn with replacement; a pure function of (n, resamples, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    d = den[idx].sum(1)
    return np.where(d > 0, num[idx].sum(1) / np.where(d > 0, d, 1.0), np.nan)


def bootstrap_ci(
    num, den=None, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """sum(num) / sum(den) over queries, with its percentile bootstrap interval (see module docstring)."""
    num, den = _check(num, den)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    stats = _ratios(num, den, resample_indices(num.size, resamples, seed))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    return Interval(float(num.sum() / den.sum()), float(low), float(high), int(num.size))


def paired_difference(
    num_a, num_b, den_a=None, den_b=None, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:  # fmt: skip
    """ratio(a) - ratio(b) over the same queries, resampled together."""
    num_a, den_a = _check(num_a, den_a)
    num_b, den_b = _check(num_b, den_b)
    if num_a.size != num_b.size:
        raise ValueError(f"paired metrics need the same queries, got {num_a.size} and {num_b.size}")
    idx = resample_indices(num_a.size, resamples, seed)
    stats = _ratios(num_a, den_a, idx) - _ratios(num_b, den_b, idx)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    value = num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum()
    return Interval(float(value), float(low), float(high), int(num_a.size))
