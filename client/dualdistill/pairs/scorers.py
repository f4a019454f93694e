"""Scorers: a number per sampled response, higher = better; the pair filter compares them.

One interface, `Scorer`: `await scorer.ascore(query, completions)` (the pipeline's path; C queries score
concurrently) or `scorer.score(query, completions)` (plain code), both returning one float per completion.
A completion with no tokens gets NaN: the filter never picks it (see `select.py`).

Chosen by a spec string (`make_scorer`):
    teacher-logprob               mean_i log p_teacher(y_i | prompt, y_<i) over the response tokens y,
                                  from the service's `logits(..., top_k=1)` (the default)
    verifier:MODULE:FUNCTION      a Python callable (query: dict, response: str) -> float (may be async);
                                  MODULE is a dotted module name or a path to a .py file
    reward-model:PATH             a local AutoModelForSequenceClassification; score = its last logit
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dualdistill.client.types import Completion
from dualdistill.pairs.scorer_base import Scorer

SPEC_FORMS = ("teacher-logprob", "verifier:MODULE:FUNCTION", "reward-model:PATH")


class ScorerSpecError(ValueError):
    """A --scorer value that does not name a usable scorer."""


class TeacherLogprobScorer(Scorer):
    """score(y) = (1/|y|) sum_i log p_teacher(y_i | x, y_<i), x = the completion's prompt_token_ids.

    One logits request per call, holding every non-empty completion as sequence x + y with start |x|;
    top_k=1 keeps the response small (only `token_logprobs` is used). `client` is a TeacherClient or an
    AsyncTeacherClient; `ascore` with a synchronous client runs the call in a worker thread.
    """

    def __init__(self, client: Any, model: str) -> None:
        self.client = client
        self.model = model
        self.name = "teacher-logprob"

    def _request(self, completions: Sequence[Completion]) -> tuple[list[int], list[list[int]], list[int]]:
        keep = [i for i, c in enumerate(completions) if c.token_ids]
        sequences = [list(completions[i].prompt_token_ids) + list(completions[i].token_ids) for i in keep]
        starts = [len(completions[i].prompt_token_ids) for i in keep]
        return keep, sequences, starts

    @staticmethod
    def _means(n: int, keep: list[int], results: Sequence[Any]) -> list[float]:
        scores = [math.nan] * n
        for i, result in zip(keep, results, strict=True):
            scores[i] = float(result.token_logprobs.astype("float64").mean())
        return scores

    async def ascore(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        keep, sequences, starts = self._request(completions)
        if not keep:
            return [math.nan] * len(completions)
        call = self.client.logits
        if inspect.iscoroutinefunction(call):
            results = await call(self.model, sequences, starts, top_k=1)
        else:
            results = await asyncio.to_thread(call, self.model, sequences, starts, top_k=1)
        return self._means(len(completions), keep, results)

    def score(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        if inspect.iscoroutinefunction(self.client.logits):
            return super().score(query, completions)
        keep, sequences, starts = self._request(completions)
        if not keep:
            return [math.nan] * len(completions)
        return self._means(len(completions), keep, self.client.logits(self.model, sequences, starts, top_k=1))


class VerifierScorer(Scorer):
    """score(y) = fn(query, y.text) for a user function; sync functions run inline (keep them fast)."""

    def __init__(self, fn: Callable[[dict, str], Any], name: str) -> None:
        self.fn = fn
        self.name = name

    def _number(self, value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{self.name} returned {value!r}; a verifier must return a number") from None

    async def ascore(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        scores = []
        for completion in completions:
            if not completion.token_ids:
                scores.append(math.nan)
                continue
            value = self.fn(query, completion.text)
            if inspect.isawaitable(value):
                value = await value
            scores.append(self._number(value))
        return scores

    def score(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        if inspect.iscoroutinefunction(self.fn):
            return super().score(query, completions)
        return [
            self._number(self.fn(query, c.text)) if c.token_ids else math.nan for c in completions
        ]


def load_callable(target: str) -> Callable[..., Any]:
    """'MODULE:FUNCTION' (dotted module or a .py path; the function name is after the last ':')."""
    module_part, sep, function_name = target.rpartition(":")
    if not sep or not module_part or not function_name:
        raise ScorerSpecError(f"verifier needs MODULE:FUNCTION, got {target!r}")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ScorerSpecError(f"verifier file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"dualdistill_verifier_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            raise ScorerSpecError(
                f"cannot import verifier module {module_part!r} ({exc}); is it on PYTHONPATH?"
            ) from exc
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise ScorerSpecError(f"{module_part!r} has no callable {function_name!r}")
    return fn


def make_scorer(
    spec: str, *, client: Any = None, teacher_model: str | None = None, device: str = "cpu"
) -> Scorer:
    """The scorer a spec names (see the module docstring); `client` and `teacher_model` serve
    'teacher-logprob', `device` serves 'reward-model'."""
    spec = spec.strip()
    if spec == "teacher-logprob":
        if client is None or not teacher_model:
            raise ScorerSpecError("the teacher-logprob scorer needs a teacher client and model name")
        return TeacherLogprobScorer(client, teacher_model)
    kind, sep, rest = spec.partition(":")
    if kind == "verifier" and sep:
        return VerifierScorer(load_callable(rest), name=spec)
    if kind == "reward-model" and sep:
        from dualdistill.pairs.reward_model import RewardModelScorer

        if not rest or not Path(rest).is_dir():
            raise ScorerSpecError(f"reward-model path {rest!r} is not a directory")
        return RewardModelScorer(rest, device=device)
    raise ScorerSpecError(f"unknown scorer {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
