"""What the service core calls on a served model, whichever engine computes it.

    TeacherService ──> Batcher ──> model.compute_logits(tasks)      (the model's worker thread)
                   │          └──> model.start_logits(tasks)        (engines that compute on threads of
                   │                                                 their own: the event loop awaits them)
                   └─> model.generate(prompts, ...)                  (worker thread, or any thread when
                                                                      `concurrent_generate` is True)

Two engines implement it: `hf` (models/served.py: our own padded forwards over a transformers model, the
default) and `vllm` (engines/vllm: vLLM's engine, in this process, for teachers that need several GPUs).
The optional members have defaults here, so an engine that does not need them (the hf one) does not
declare them; the core reads them only through the helpers below.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the settings import ENGINES from here, which must not import torch
    from dualdistill.protocol.results import SequenceLogits
    from dualdistill_server.models.types import GeneratedCompletion, LogitsTask, ModelInfo

ENGINES = ("hf", "vllm")


@runtime_checkable
class EngineModel(Protocol):
    """One served model. `compute_logits` follows docs/api.md "Semantics" exactly; an engine that cannot
    compute a task exactly refuses it in `check_tasks` instead of approximating it."""

    name: str  # the served name (NAME in --model NAME=PATH)
    info: ModelInfo  # limits, tokenizer hash, engine, dtype, fingerprint

    def compute_logits(self, tasks: list[LogitsTask]) -> list[SequenceLogits]:
        """One SequenceLogits per task, in order; blocking."""
        ...

    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float, n: int, seed: int
    ) -> list[GeneratedCompletion]:
        """n completions per prompt, ordered by prompt then sample; blocking."""
        ...

    def encode_text(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict]) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class PendingLogits:
    """Logits tasks handed to an engine that computes on threads of its own (`start_logits`): `futures`
    settle when the engine is done with them, and `finish()` then turns what they hold into one
    SequenceLogits per task, in order (blocking until every future has settled; the first failure is
    raised once all have)."""

    futures: list[Future[Any]]
    finish: Callable[[], list[SequenceLogits]]


def logits_starter(model: EngineModel) -> Callable[[list[LogitsTask]], PendingLogits] | None:
    """The model's `start_logits` where its engine computes on threads of its own (vllm's step thread), else
    None. With it the batcher submits a batch from the event loop and awaits its futures there, instead of
    blocking the model's worker thread on them: two thread hand-offs fewer per forward (the loop to the
    worker and back). It checks the tasks first (`check_tasks`), raising before any work."""
    start = getattr(model, "start_logits", None)
    return start if callable(start) else None


def check_tasks(model: EngineModel, tasks: list[LogitsTask]) -> None:
    """Raise InvalidArgument for a task the model's engine cannot compute exactly (before any work)."""
    check = getattr(model, "check_tasks", None)
    if check is not None:
        check(tasks)


def generates_concurrently(model: EngineModel) -> bool:
    """True when `generate` may run on many threads at once: the engine batches concurrent requests itself
    (continuous batching), so the core must not queue them one by one on the model's worker thread."""
    return bool(getattr(model, "concurrent_generate", False))


def on_failure(model: EngineModel, listener: Callable[[BaseException], None]) -> None:
    """Call `listener(error)` (from any thread) if the model's engine dies after loading; a no-op for
    engines that cannot die apart from the process (hf)."""
    subscribe = getattr(model, "on_failure", None)
    if subscribe is not None:
        subscribe(listener)


def warm_up(model: EngineModel) -> bool:
    """Do before the first request what the model's engine would otherwise do during it (compilations on
    first use); False for engines that need none (hf)."""
    warm = getattr(model, "warm_up", None)
    if warm is None:
        return False
    warm()
    return True


def close(model: EngineModel) -> None:
    """Release the engine's resources (threads, worker processes); a no-op where there are none."""
    closer = getattr(model, "close", None)
    if closer is not None:
        closer()
