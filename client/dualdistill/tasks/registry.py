"""Every built-in task by name: its query stream and its verifier (for the pair filter's `--scorer`).

    arithmetic-d1, arithmetic-d2, arithmetic-d3   word problems (dualdistill.tasks.arithmetic)
    successor, predecessor, add-small, double, larger, count-items   (dualdistill.tasks.numbers)
"""

from __future__ import annotations

from collections.abc import Callable

from dualdistill.tasks import arithmetic, numbers

TASK_NAMES = tuple(f"arithmetic-d{d}" for d in arithmetic.DIFFICULTIES) + tuple(numbers.TASKS)


def check_task(name: str) -> str:
    if name not in TASK_NAMES:
        raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}, got {name!r}")
    return name


def make_queries(name: str, n: int, seed: int) -> list[dict]:
    """`n` queries of task `name` from the stream of `seed` ({"id", "prompt", "messages", "answer"})."""
    check_task(name)
    if name.startswith("arithmetic-d"):
        return arithmetic.make_queries(n, seed=seed, difficulty=int(name.removeprefix("arithmetic-d")))
    return numbers.make_queries(name, n, seed=seed)


def verifier(name: str) -> Callable[[dict, str], float]:
    """The task's 0/1 verifier, verify(query, response) -> score."""
    check_task(name)
    return arithmetic.verify if name.startswith("arithmetic-d") else numbers.verify


def verifier_spec(name: str) -> str:
    """The `--scorer` value of the task's verifier."""
    module = "arithmetic" if check_task(name).startswith("arithmetic-d") else "numbers"
    return f"verifier:dualdistill.tasks.{module}:verify"
