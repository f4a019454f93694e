"""The bootstrap against a plain loop over the same resampled indices, and its basic properties."""

from __future__ import annotations

import numpy as np
import pytest

from dualdistill.study.bootstrap import Interval, bootstrap_ci, paired_difference, resample_indices


def plain_ratio_ci(num, den, resamples, seed, confidence=0.95):
    idx = resample_indices(len(num), resamples, seed)
    stats = []
    for row in idx:
        stats.append(sum(num[i] for i in row) / sum(den[i] for i in row))
    stats.sort()
    tail = (1 - confidence) / 2
    # numpy's default percentile: linear interpolation between order statistics
    def pct(q):
        pos = q * (len(stats) - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo)
    return sum(num) / sum(den), pct(tail), pct(1 - tail)


def test_ratio_interval_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    num = rng.normal(2.0, 1.0, size=37)
    den = rng.integers(1, 9, size=37).astype(float)
    got = bootstrap_ci(num, den, resamples=500, seed=7)
    value, low, high = plain_ratio_ci(list(num), list(den), 500, 7)
    assert got.n == 37
    np.testing.assert_allclose([got.value, got.low, got.high], [value, low, high], rtol=1e-12)
    assert got.low < got.value < got.high


def test_mean_interval_shrinks_with_more_queries_and_is_degenerate_for_constants():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 50).astype(float))
    large = bootstrap_ci(rng.integers(0, 2, 5000).astype(float))
    assert (large.high - large.low) < (small.high - small.low) / 5
    const = bootstrap_ci(np.full(20, 0.25))
    assert const.low == const.value == const.high == 0.25


def test_paired_difference_removes_shared_query_variation():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 5, size=200)  # large query-to-query variation shared by both methods
    a, b = base + 0.3, base
    paired = paired_difference(a, b)
    assert paired.low == pytest.approx(0.3) and paired.high == pytest.approx(0.3)
    assert not bootstrap_ci(a).separates_from(bootstrap_ci(b))  # unpaired intervals overlap
    assert Interval(1.0, 0.9, 1.1, 3).separates_from(Interval(0.5, 0.4, 0.8, 3))


@pytest.mark.parametrize(
    "num, den, message",
    [([], None, "at least one"), ([1.0, 2.0], [1.0], "one length"), ([1.0], [0.0], "positive sum")],
)
def test_bad_input_is_refused(num, den, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(num, den)
