"""Short checkable number tasks, candidates for a task the teacher can teach (see docs/results.md).

Each task is a stream of queries with an integer answer; `verify` (the arithmetic verifier: the final
number of the response must equal the answer) scores all of them, so any of them plugs into the pair
filter as `--scorer verifier:dualdistill.tasks.numbers:verify`. Generation is a pure function of (task,
seed, index), as in `dualdistill.tasks.arithmetic`.

    successor    "What number comes right after 47?"                  -> 48
    predecessor  "What number comes right before 47?"                 -> 46
    add-small    "What is 3 + 5?"                                      -> 8   (one-digit operands)
    double       "What is 2 times 17?"                                 -> 34
    larger       "Which number is larger, 37 or 52?"                   -> 52
    count-items  "How many items are in this list: cat, sun, cup?"     -> 3
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dualdistill.tasks.arithmetic import query_record
from dualdistill.tasks.arithmetic import verify as _verify_final_number

_WORDS = ("cat", "sun", "cup", "tree", "book", "car", "hat", "pen", "box", "key", "fish", "door", "ball", "milk",
          "rain", "star", "bird", "lamp", "ship", "rose")  # fmt: skip


def _successor(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(1, 98)
    return f"What number comes right after {n}?", n + 1


def _predecessor(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(2, 99)
    return f"What number comes right before {n}?", n - 1


def _add_small(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b


def _double(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(2, 49)
    return f"What is 2 times {n}?", 2 * n


def _larger(rng: random.Random) -> tuple[str, int]:
    a, b = rng.sample(range(1, 100), 2)
    return f"Which number is larger, {a} or {b}?", max(a, b)


def _count_items(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(2, 7)
    return f"How many items are in this list: {', '.join(rng.sample(_WORDS, n))}?", n


TASKS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "successor": _successor,
    "predecessor": _predecessor,
    "add-small": _add_small,
    "double": _double,
    "larger": _larger,
    "count-items": _count_items,
}


def make_problem(task: str, seed: int, index: int) -> dict:
    """Problem `index` of `task`'s stream for `seed`: {"id", "prompt", "messages", "answer"}."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    rng = random.Random(f"numbers/{task}/{seed}/{index}")  # str seeds hash stably (sha512)
    text, answer = TASKS[task](rng)
    return query_record(f"{task}-s{seed}-{index:06d}", text, answer)


def make_queries(task: str, n: int, seed: int = 0) -> list[dict]:
    """`n` problems of `task` (ids unique per (task, seed)); problem i is the same for every n > i."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_problem(task, seed, i) for i in range(n)]


def verify(query: dict, response: str) -> float:
    """1.0 when the response's final number equals `query["answer"]`, else 0.0."""
    return _verify_final_number(query, response)
