"""The number tasks: every answer recomputed from the prompt's text, streams stable and disjoint, and the
registry's verifier specs loadable by the pair filter."""

from __future__ import annotations

import importlib
import re

import pytest

from dualdistill.tasks import numbers
from dualdistill.tasks.registry import TASK_NAMES, make_queries, verifier, verifier_spec


def recompute(task: str, prompt: str) -> int:
    """The answer from the prompt's words, independently of the generator."""
    values = [int(v) for v in re.findall(r"\d+", prompt.split("?")[0])]
    if task == "count-items":
        return len(prompt.split(":", 1)[1].split("?")[0].split(","))
    return {"successor": lambda v: v[0] + 1, "predecessor": lambda v: v[0] - 1, "add-small": lambda v: v[0] + v[1],
            "double": lambda v: v[0] * v[1], "larger": max}[task](values)  # fmt: skip


@pytest.mark.parametrize("task", list(numbers.TASKS))
def test_answers_match_the_prompt(task):
    queries = numbers.make_queries(task, 60, seed=3)
    assert all(recompute(task, q["prompt"]) == q["answer"] for q in queries)
    assert len({q["id"] for q in queries}) == 60
    assert numbers.make_queries(task, 5, seed=3) == queries[:5]  # problem i does not depend on n
    assert numbers.make_queries(task, 5, seed=4) != queries[:5]


def test_verify_reads_the_final_number():
    query = numbers.make_problem("double", 0, 0)
    assert numbers.verify(query, f"2 * x = {query['answer']}") == 1.0
    assert numbers.verify(query, f"It is {query['answer']} or {query['answer'] + 1}") == 0.0
    assert numbers.verify(query, "no idea") == 0.0


def test_registry_covers_every_task_and_its_verifier_spec_loads():
    for name in TASK_NAMES:
        [query] = make_queries(name, 1, seed=0)
        assert verifier(name)(query, str(query["answer"])) == 1.0
        module, function = verifier_spec(name).removeprefix("verifier:").split(":")
        assert getattr(importlib.import_module(module), function) is verifier(name)
    with pytest.raises(ValueError, match="task must be one of"):
        make_queries("nope", 1, seed=0)
    with pytest.raises(ValueError, match="task must be one of"):
        numbers.make_problem("nope", 0, 0)
