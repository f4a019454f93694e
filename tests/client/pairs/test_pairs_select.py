"""The preference filter (pure function): hand-computed cases and an independent brute-force reference."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualdistill.pairs.select import DROP_REASONS, choose_pair

NAN = math.nan


def test_best_worst_hand_computed():
    # positives -1.0, -0.2, -0.5 -> best is index 1 (-0.2); negatives -2.0, -3.5, -1.0 -> worst index 1 (-3.5)
    d = choose_pair([-1.0, -0.2, -0.5], [-2.0, -3.5, -1.0], [3, 3, 3], [3, 3, 3], margin=3.0)
    assert (d.positive, d.negative, d.kept, d.reason) == (1, 1, True, None)
    assert d.margin == pytest.approx(3.3)


def test_margin_boundary_is_inclusive():
    d = choose_pair([1.5], [0.5], [1], [1], margin=1.0)
    assert d.kept and d.margin == 1.0
    d = choose_pair([1.5], [0.5], [1], [1], margin=1.0000001)
    assert not d.kept and d.reason == "below_margin" and d.margin == 1.0


def test_best_best_takes_the_hardest_negative():
    d = choose_pair([0.9, 0.1], [0.2, 0.8, 0.5], [2, 2], [2, 2, 2], margin=0.05, pick="best-best")
    assert (d.positive, d.negative) == (0, 1)
    assert d.kept and d.margin == pytest.approx(0.1)
    d = choose_pair([0.9, 0.1], [0.2, 0.8, 0.5], [2, 2], [2, 2, 2], margin=0.2, pick="best-best")
    assert not d.kept and d.reason == "below_margin"


def test_min_score_checked_before_margin():
    d = choose_pair([0.0], [-10.0], [1], [1], margin=5.0, min_score=0.5)
    assert not d.kept and d.reason == "below_min_score" and d.margin == 10.0
    d = choose_pair([0.5], [-10.0], [1], [1], margin=5.0, min_score=0.5)
    assert d.kept


def test_verifier_style_scores():
    # 0/1 verifier: one correct teacher answer, all student answers wrong -> kept with margin 1
    d = choose_pair([0.0, 1.0, 0.0], [0.0, 0.0], [4, 4, 4], [4, 4], margin=1.0, min_score=1.0)
    assert (d.positive, d.negative, d.kept) == (1, 0, True)
    # nobody correct -> no positive reaches min_score
    d = choose_pair([0.0, 0.0], [0.0, 0.0], [4, 4], [4, 4], margin=1.0, min_score=1.0)
    assert d.reason == "below_min_score"


def test_ties_go_to_the_lower_index():
    d = choose_pair([2.0, 2.0, 1.0], [0.0, 0.0], [1, 1, 1], [1, 1], margin=0.0)
    assert (d.positive, d.negative) == (0, 0)


def test_empty_and_nonfinite_samples_never_picked():
    # index 0 has the best score but no tokens; index 1 is NaN; index 2 is the only valid positive
    d = choose_pair([5.0, NAN, 1.0], [0.0, -math.inf, -9.0], [0, 3, 3], [2, 2, 0], margin=0.0)
    assert (d.positive, d.negative) == (2, 0) and d.kept and d.margin == 1.0
    assert choose_pair([NAN], [0.0], [3], [3], margin=0.0).reason == "no_valid_positive"
    assert choose_pair([1.0], [0.0], [0], [3], margin=0.0).reason == "no_valid_positive"
    d = choose_pair([1.0], [0.0], [3], [0], margin=0.0)
    assert (d.reason, d.positive, d.negative, d.margin) == ("no_valid_negative", 0, None, None)


def test_random_pick_is_seeded_and_among_valid():
    args = ([0.1, 0.2, NAN, 0.4], [0.0, 0.3, 0.5], [1, 1, 1, 1], [1, 1, 1])
    picks = {
        (d.positive, d.negative)
        for seed in range(60)
        for d in [choose_pair(*args, margin=-10, pick="random", rng=random.Random(seed))]
    }
    assert {p for p, _ in picks} == {0, 1, 3} and {n for _, n in picks} == {0, 1, 2}
    a = choose_pair(*args, margin=-10, pick="random", rng=random.Random(5))
    b = choose_pair(*args, margin=-10, pick="random", rng=random.Random(5))
    assert a == b
    with pytest.raises(ValueError, match="rng"):
        choose_pair(*args, margin=0, pick="random")


def test_bad_arguments():
    with pytest.raises(ValueError, match="pick must be one of"):
        choose_pair([1.0], [0.0], [1], [1], margin=0.0, pick="worst")
    with pytest.raises(ValueError, match="scores for"):
        choose_pair([1.0, 2.0], [0.0], [1], [1], margin=0.0)
    with pytest.raises(ValueError, match="NaN"):
        choose_pair([1.0], [0.0], [1], [1], margin=NAN)


def _reference(pos, neg, pos_len, neg_len, margin, min_score, pick):
    """Brute force over every (i, j): the lexicographically first pair with the extreme scores."""
    vp = [i for i in range(len(pos)) if pos_len[i] > 0 and math.isfinite(pos[i])]
    vn = [j for j in range(len(neg)) if neg_len[j] > 0 and math.isfinite(neg[j])]
    i = j = None
    if vp:
        best_pos = max(pos[k] for k in vp)
        i = next(k for k in vp if pos[k] == best_pos)
    if vn:
        target = min(neg[k] for k in vn) if pick == "best-worst" else max(neg[k] for k in vn)
        j = next(k for k in vn if neg[k] == target)
    if i is None:
        return i, j, "no_valid_positive"
    if j is None:
        return i, j, "no_valid_negative"
    if pos[i] < min_score:
        return i, j, "below_min_score"
    if pos[i] - neg[j] < margin:
        return i, j, "below_margin"
    return i, j, None


score = st.one_of(st.floats(-5, 5), st.sampled_from([NAN, -math.inf, 0.0, 1.0]))


@settings(max_examples=150, deadline=None)
@given(
    pos=st.lists(st.tuples(score, st.integers(0, 3)), min_size=1, max_size=6),
    neg=st.lists(st.tuples(score, st.integers(0, 3)), min_size=1, max_size=6),
    margin=st.floats(-2, 2),
    min_score=st.sampled_from([-math.inf, -1.0, 0.0, 1.0]),
    pick=st.sampled_from(["best-worst", "best-best"]),
)
def test_matches_brute_force(pos, neg, margin, min_score, pick):
    ps, pl = [s for s, _ in pos], [n for _, n in pos]
    ns, nl = [s for s, _ in neg], [n for _, n in neg]
    d = choose_pair(ps, ns, pl, nl, margin=margin, min_score=min_score, pick=pick)
    assert (d.positive, d.negative, d.reason) == _reference(ps, ns, pl, nl, margin, min_score, pick)
    assert d.kept == (d.reason is None)
    assert d.reason is None or d.reason in DROP_REASONS
