"""pass@k against brute-force enumeration of every k-subset; the per-query seed mean."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from dualdistill.study.estimators import pass_at_k, per_query_mean


@pytest.mark.parametrize("n, c, k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 3, 6), (7, 7, 2), (8, 3, 4)])
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_right_sample(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_per_query_mean_averages_seeds_per_query():
    got = per_query_mean([np.array([1.0, 0.0, 3.0]), np.array([0.0, 0.0, 1.0])])
    np.testing.assert_allclose(got, [0.5, 0.0, 2.0])
