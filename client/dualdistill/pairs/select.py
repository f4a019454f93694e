"""The pair-wise preference filter: which positive and negative form a pair, and whether it is kept.

Pure functions on score lists. With positives scored s+ = (s+_1 .. s+_n) and negatives s- = (s-_1 .. s-_m),
only *valid* samples take part: a sample is valid when its response is non-empty and its score finite
(an empty response has nothing to learn from at the token level, and a NaN would compare false with
everything). Among the valid ones, `pick` chooses one positive i and one negative j:

    best-worst:  i = argmax s+,  j = argmin s-    (the clearest contrast; the default)
    best-best:   i = argmax s+,  j = argmax s-    (the hardest negative: the student's best attempt)
    random:      i, j uniform, from a generator seeded per query (reproducible, order-independent)

ties go to the lower index. The pair (i, j) is kept iff

    s+_i >= min_score   and   s+_i - s-_j >= margin

and otherwise dropped with the first rule it breaks, in the order listed in `DROP_REASONS`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

PICKS = ("best-worst", "best-best", "random")
# Every reason a query can be dropped for, in the order they are checked.
DROP_REASONS = ("no_valid_positive", "no_valid_negative", "below_min_score", "below_margin")


@dataclass(frozen=True)
class Decision:
    positive: int | None  # index of the chosen positive, None when none is valid
    negative: int | None  # index of the chosen negative, None when none is valid
    kept: bool
    reason: str | None  # one of DROP_REASONS when dropped, None when kept
    margin: float | None  # s+_i - s-_j when both exist


def valid_indices(scores: Sequence[float], lengths: Sequence[int]) -> list[int]:
    """Indices of samples with a non-empty response (length > 0 tokens) and a finite score."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores for {len(lengths)} samples")
    return [i for i, (s, n) in enumerate(zip(scores, lengths, strict=True)) if n > 0 and math.isfinite(s)]


def _argbest(indices: list[int], scores: Sequence[float], highest: bool) -> int:
    # min/max return the first of equal keys, and `indices` ascend, so ties go to the lower index.
    key = (lambda i: -scores[i]) if highest else (lambda i: scores[i])
    return min(indices, key=key)


def choose_pair(
    pos_scores: Sequence[float],
    neg_scores: Sequence[float],
    pos_lengths: Sequence[int],
    neg_lengths: Sequence[int],
    *,
    margin: float,
    min_score: float = -math.inf,
    pick: str = "best-worst",
    rng: random.Random | None = None,
) -> Decision:
    """Pick a (positive, negative) pair and decide whether to keep it; see the module docstring.

    pos_scores, pos_lengths: (n,) score and response length in tokens of each positive sample.
    neg_scores, neg_lengths: (m,) the same for the negatives.
    rng: needed for pick="random" only.
    """
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    if math.isnan(margin) or math.isnan(min_score):
        raise ValueError("margin and min_score must not be NaN")
    positives = valid_indices(pos_scores, pos_lengths)
    negatives = valid_indices(neg_scores, neg_lengths)
    if pick == "random" and rng is None and positives and negatives:
        raise ValueError("pick='random' needs an rng")
    if pick == "random":
        i = rng.choice(positives) if positives else None
        j = rng.choice(negatives) if negatives else None
    else:
        i = _argbest(positives, pos_scores, highest=True) if positives else None
        j = _argbest(negatives, neg_scores, highest=(pick == "best-best")) if negatives else None
    gap = None if i is None or j is None else float(pos_scores[i]) - float(neg_scores[j])
    if i is None:
        reason = "no_valid_positive"
    elif j is None:
        reason = "no_valid_negative"
    elif pos_scores[i] < min_score:
        reason = "below_min_score"
    elif gap < margin:
        reason = "below_margin"
    else:
        reason = None
    return Decision(positive=i, negative=j, kept=reason is None, reason=reason, margin=gap)
