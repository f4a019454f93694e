"""Per-query estimators of the quality study (each returns one value per query; see bootstrap.py).

pass_at_k(n, c, k) = 1 - C(n - c, k) / C(n, k): the unbiased probability that at least one of k samples
drawn without replacement from n samples, c of them right, is right (Chen et al., 2021).
"""

from __future__ import annotations

from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one query with n samples of which c are right (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def per_query_mean(values_by_seed: list[np.ndarray]) -> np.ndarray:
    """(queries,) mean over seeds of (queries,) arrays of one method (the same queries in every seed)."""
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values_by_seed])
    if stacked.ndim != 2:
        raise ValueError(f"expected a list of 1-D arrays, got shape {stacked.shape}")
    return stacked.mean(0)
