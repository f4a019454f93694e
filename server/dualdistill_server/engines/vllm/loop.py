"""`EngineLoop`: one thread that owns a vLLM `LLMEngine` and runs its step loop (continuous batching).

    compute_logits / generate (any thread) ──submit(prompt, params)──> inbox ──┐
                                                                              ▼
    step thread:  add every waiting request ─> engine.step() ─> finished outputs ─> their futures
                                                    └─ PromptLogprobsTap: prompt logprobs as numpy arrays

vLLM's LLMEngine is not thread-safe, and the service calls the model from several threads (the batcher's
worker for logits, one thread per generate request), so exactly one thread touches the engine. Requests
that arrive while others run join the next step: vLLM's scheduler batches them token by token, logits
requests (prompt-only prefills) and generation alike.

Several models in one server are several engines, one step thread each, but vLLM's engines in one process
share global state (the current vLLM config and forward context, the CPU backend's thread pools): two
steps at once corrupt memory (the server died with `munmap_chunk(): invalid pointer` under concurrent
requests to two models). So the process runs one engine call (add_request or step) at a time,
`_PROCESS_ENGINE_LOCK`; the models take turns step by step.

If a step raises, the engine is dead (vLLM cannot resume after a failed step): every waiting request fails
with `EngineDead`, later submissions fail at once, and the failure listeners run (the server then stops
with exit code 1, since a replica that cannot compute must leave the load balancer).

A request submitted with `prompt_logprobs="arrays"` gets its prompt logprobs as numpy arrays taken from the
engine core's tensors (engines/vllm/prompt_logprobs.py) instead of vLLM's per-entry Python lists;
"both" keeps the lists as well (the tests compare the two on the same engine output).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal, NamedTuple

from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays, PromptLogprobsTap
from dualdistill_server.os_threads import name_os_thread

PromptLogprobsAs = Literal["flat", "arrays", "both"]

log = logging.getLogger(__name__)

_PROCESS_ENGINE_LOCK = threading.Lock()  # one vLLM engine call at a time in this process (see the docstring)


class EngineDead(RuntimeError):
    """The vLLM engine failed and cannot serve any more requests."""


class Finished(NamedTuple):
    """A finished request: vLLM's final RequestOutput, and its prompt logprobs where they were tapped."""

    output: Any  # vllm.RequestOutput
    prompt_logprobs: PromptLogprobArrays | None  # None unless submitted with prompt_logprobs "arrays"/"both"


class EngineLoop:
    """Thread-safe front of one LLMEngine: `submit` returns a Future of the request's `Finished`."""

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        self.name = name
        self.tap = PromptLogprobsTap(engine)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # (request_id, prompt, params, how, future) | None
        self._futures: dict[str, Future] = {}  # added to the engine, not finished
        self._core_ids: dict[str, str] = {}  # their ids in vLLM's engine core
        self._ids = itertools.count()
        self._listeners: list[Callable[[BaseException], None]] = []
        self._lock = threading.Lock()  # guards error / listeners
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"vllm-{name}", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------------------

    def submit(self, prompt: Any, params: Any, *, prompt_logprobs: PromptLogprobsAs = "flat") -> Future:
        """Future of the request's `Finished`; `prompt_logprobs` says where its prompt logprobs go (module doc)."""
        future: Future = Future()
        with self._lock:  # queued under the lock: a failing loop drains the inbox after setting error
            if self.error is not None or self._closed:
                future.set_exception(self._dead_error())
                return future
            self._inbox.put((f"{self.name}-{next(self._ids)}", prompt, params, prompt_logprobs, future))
        return future

    def on_failure(self, listener: Callable[[BaseException], None]) -> None:
        """Call `listener(error)` once if the engine dies (at once if it already has)."""
        with self._lock:
            if self.error is None:
                self._listeners.append(listener)
                return
        listener(self.error)

    def close(self) -> None:
        """Stop the step loop (requests still running fail) and wait for the thread."""
        with self._lock:
            self._closed = True
            self._inbox.put(None)
        self._thread.join(timeout=30)

    def _dead_error(self) -> EngineDead:
        if self.error is not None:
            return EngineDead(f"the vllm engine of model {self.name!r} failed: {self.error!r}")
        return EngineDead(f"the vllm engine of model {self.name!r} is shut down")

    # ---- the step thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        name_os_thread(f"vllm-{self.name}")
        try:
            while not self._closed:
                self._admit(block=not self._futures)
                if self._futures and not self._closed:
                    self._step()
        except BaseException as exc:  # noqa: BLE001 - any failure of a step ends the engine
            log.error("the vllm engine of model %s failed: %r", self.name, exc, exc_info=True)
            with self._lock:
                self.error = exc
                listeners, self._listeners = self._listeners, []
            for listener in listeners:
                listener(exc)
        self._fail_all()

    def _admit(self, *, block: bool) -> None:
        """Add the waiting requests to the engine (wait for one when nothing runs)."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            request_id, prompt, params, how, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                # vLLM's core knows the request by an id of its own (ours + a random suffix), which it returns
                with _PROCESS_ENGINE_LOCK:
                    core_id = self.engine.add_request(request_id, prompt, params) or request_id
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone (e.g. too long)
                future.set_exception(exc)
                continue
            if how != "flat" and self.tap.installed:  # before the next step, whose outputs it reads
                self.tap.watch(core_id, keep_flat=how == "both")
            self._futures[request_id] = future
            self._core_ids[request_id] = core_id

    def _step(self) -> None:
        with _PROCESS_ENGINE_LOCK:
            outputs = self.engine.step()
        for output in outputs:
            if output.finished:
                future = self._futures.pop(output.request_id, None)
                arrays = self.tap.take(self._core_ids.pop(output.request_id, output.request_id))
                if future is not None:
                    future.set_result(Finished(output, arrays))

    def _fail_all(self) -> None:
        error = self._dead_error()
        for future in self._futures.values():
            future.set_exception(error)
        self._futures.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[-1].set_running_or_notify_cancel():
                item[-1].set_exception(error)
