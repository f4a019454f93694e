"""The arithmetic task: reproducible problems with correct answers, a robust final-number reader, the verifier."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from dualdistill.pairs.queries import check_query
from dualdistill.tasks.arithmetic import extract_final_number, make_problem, make_queries, verify


def _solve(prompt: str) -> int:
    """An independent solver: re-read the numbers from the text and redo the steps the wording names."""
    value = None
    for sentence in re.split(r"(?<=\.)\s+", prompt):
        if m := re.search(r"has (\d+) \w+ and gets (\d+) more", sentence):
            value = int(m[1]) + int(m[2])
        elif m := re.search(r"has (\d+) \w+ and gives away (\d+)", sentence):
            value = int(m[1]) - int(m[2])
        elif m := re.search(r"ends up with (\d+) times as many", sentence):
            value *= int(m[1])
        elif m := re.search(r"among (\d+) friends", sentence):
            assert value % int(m[1]) == 0, "division must be exact"
            value //= int(m[1])
    return value


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_answers_follow_from_the_wording(difficulty):
    for query in make_queries(200, seed=3, difficulty=difficulty):
        assert query["answer"] == _solve(query["prompt"]), query["prompt"]
        assert query["answer"] >= 0
        assert check_query(query) is None
        assert query["messages"] == [{"role": "user", "content": query["prompt"]}]


def test_reproducible_and_prefix_stable():
    a = make_queries(50, seed=7, difficulty=2)
    assert a == make_queries(50, seed=7, difficulty=2)
    assert a[:10] == make_queries(10, seed=7, difficulty=2)  # problem i does not depend on n
    assert a != make_queries(50, seed=8, difficulty=2)
    assert len({q["id"] for q in a}) == 50
    assert make_problem(7, 4, 2) == a[4]


def test_difficulty_grows_numbers_and_steps():
    easy = make_queries(100, seed=0, difficulty=1)
    hard = make_queries(100, seed=0, difficulty=3)
    assert max(q["answer"] for q in easy) <= 40
    assert all("friends" in q["prompt"] or "kept" in q["prompt"] for q in hard)
    with pytest.raises(ValueError, match="difficulty"):
        make_queries(1, difficulty=4)
    with pytest.raises(ValueError, match="n must be"):
        make_queries(-1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", 42),
        ("42", 42),
        ("3 + 4 = 7", 7),
        ("5-3", 3),  # a subtraction, not -3
        ("the result is -3", -3),
        ("He has 1,234 apples", 1234),
        ("7.0", 7),
        ("7.5", Fraction(15, 2)),
        ("so \\boxed{12}. Check: 12 + 1 = 13", 12),
        ("#### 18\nextra 99", 18),
        ("costs $15 in total", 15),
        ("1,2,3", 3),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_verify():
    query = {"id": "q", "answer": 12}
    assert verify(query, "12") == 1.0
    assert verify(query, "First 5, then 7 more, so 12.") == 1.0
    assert verify(query, "12 apples, no wait, 13") == 0.0
    assert verify(query, "12.0") == 1.0
    assert verify(query, "nothing") == 0.0
    assert verify({"id": "q", "answer": "1,200"}, "it is 1200") == 1.0
    with pytest.raises(ValueError, match="no 'answer'"):
        verify({"id": "q"}, "12")
    with pytest.raises(ValueError, match="not a number"):
        verify({"id": "q", "answer": "twelve"}, "12")
