"""TeacherService: the one core behind both transports.

    HTTP handler ─┐                      ┌─ validation.py (model limits -> LogitsTasks)
                  ├─> TeacherService ────┼─ limits.py (per-tenant token bucket)
    gRPC servicer ┘   (readiness, drain,  ├─ cache.py (per-sequence lookup / store)
                       deadlines)         └─ Batcher per model (dedupe, padded forwards, worker thread)

Transports authenticate with `service.api_keys` (the tenant goes into the request context), hold a
`service.limits.slot(tenant)` for the request, turn their input into `schemas.LogitsRequest` /
`GenerateRequest`, call `logits` / `generate`, and turn the result (or the typed error) into their own
response. Nothing here knows about HTTP or protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dualdistill.protocol.results import SequenceLogits

from .. import context, engines
from ..config import ServerConfig
from ..errors import DeadlineExceeded, ModelNotFound, Unavailable
from ..metrics import Metrics
from ..models import GeneratedCompletion, ModelInfo
from ..schemas import GenerateRequest, LogitsRequest
from .api_keys import ApiKeys
from .batcher import Batcher
from .cache import ResultCache, sequence_key
from .limits import TenantLimits
from .validation import check_text_fits, generate_budget, logits_tasks, prompt_ids

log = logging.getLogger(__name__)


@dataclass
class LogitsResult:
    model: str
    fingerprint: str
    request_id: str
    results: list[SequenceLogits]  # one per request sequence, in order


@dataclass
class GenerateResult:
    model: str
    fingerprint: str
    request_id: str
    completions: list[GeneratedCompletion]  # by prompt_index, then sample


class TeacherService:
    """Serves `models` (name -> ServedModel). Construct with no models to start "loading" (not ready);
    `add_model` then `mark_loaded` when they are in memory.

    `cache`: the result cache (main.py opens the backend `config.cache` names); None = no cache.
    `api_keys`: default from config.api_key_file / config.api_keys (raises ValueError for a bad entry).
    The per-tenant limits come from config.tenant_tokens_per_second / tenant_max_concurrency.
    """

    def __init__(
        self,
        models: dict,
        config: ServerConfig,
        *,
        metrics: Metrics | None = None,
        cache: ResultCache | None = None,
        api_keys: ApiKeys | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.cache = cache if cache is not None else ResultCache(None, self.metrics)
        self.api_keys = api_keys if api_keys is not None else ApiKeys.from_settings(config.api_key_file,
                                                                                   config.api_keys)
        self.limits = TenantLimits(config.tenant_tokens_per_second, config.tenant_max_concurrency, self.metrics)
        self._models: dict = {}
        self._batchers: dict[str, Batcher] = {}
        self._loaded = False
        self._draining = False
        self._listeners: list[Callable[[bool], None]] = []
        self._active = 0
        # Threads that wait on an engine with continuous batching (vllm): one per generate request in
        # flight, mostly blocked on the engine's futures; asyncio's default pool (cores + 4) would cap
        # how many requests the engine ever batches together.
        self._waiting_pool: ThreadPoolExecutor | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        for name, model in models.items():
            self.add_model(name, model)
        if models:
            self.mark_loaded()

    # ---- lifecycle -------------------------------------------------------------------------------------

    def add_model(self, name: str, model) -> None:
        self._models[name] = model
        self._batchers[name] = Batcher(
            name,
            model,
            max_batch_tokens=self.config.max_batch_tokens,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue_tokens=self.config.max_queue_tokens,
            metrics=self.metrics,
            on_result=self.cache.store,
            # vLLM computes on its engine's threads: the loop awaits its forwards (batcher.py), never runs one
            inline_forward_s=0.0 if engines.logits_starter(model) else self.config.inline_forward_ms / 1000,
            quiet=lambda: self._active <= 1,
        )

    def mark_loaded(self) -> None:
        self._loaded = True
        self._notify()

    def start_draining(self) -> None:
        """Refuse new work (UNAVAILABLE) and report not-ready; in-flight requests go on."""
        self._draining = True
        self._notify()

    @property
    def ready(self) -> bool:
        return self._loaded and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active_requests(self) -> int:
        return self._active

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` now and on every readiness change (gRPC health uses it)."""
        self._listeners.append(listener)
        listener(self.ready)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.ready)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        for model in self._models.values():
            await asyncio.to_thread(engines.close, model)  # vllm: stops its step thread and workers
        if self._waiting_pool is not None:
            self._waiting_pool.shutdown(wait=False, cancel_futures=True)
        await self.cache.close()  # writes the results still waiting (the disk cache keeps them)

    # ---- queries ---------------------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [model.info for model in self._models.values()]

    def served_model(self, name: str):
        """The ServedModel behind `name` (after the same readiness and name checks as a request), for
        transports that need its ModelInfo or tokenizer (the OpenAI dialect decodes token texts)."""
        return self._admit(name)[1]

    async def encode_texts(self, name: str, texts: list[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, on the model's worker thread (its tokenizer is not shared)."""
        _, model = self._admit(name)

        def run() -> list[list[int]]:
            for index, text in enumerate(texts):
                check_text_fits(len(text), model, f"prompt[{index}]")
            return [list(model.tokenizer.encode(text, add_special_tokens=add_special_tokens)) for text in texts]

        return await self._batchers[name].run_on_worker(run)

    async def logits(
        self,
        request: LogitsRequest,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        token_ranks: bool = False,
    ) -> LogitsResult:
        """Teacher distributions for every sequence. `request_id`: what the transport resolved
        (`context.resolve_request_id`); `timeout` (seconds) is the transport's deadline; the request's
        `deadline_seconds` applies too, whichever is sooner. `token_ranks`: every result also carries the
        actual token's rank per row (cached apart from the unranked results)."""
        name, model = self._admit(request.model)
        info = model.info
        tasks = logits_tasks(request, info, self.config, token_ranks=token_ranks)
        engines.check_tasks(model, tasks)  # what the engine cannot compute exactly: 422 before any work
        self.limits.charge(context.current_tenant(), request.num_tokens)
        timeout = _sooner(timeout, request.deadline_seconds)
        with self._tracking():
            results = await _within(timeout, self._compute(name, info.fingerprint, tasks))
        return LogitsResult(name, info.fingerprint, _answered_id(request, request_id), results)

    async def generate(
        self, request: GenerateRequest, *, request_id: str | None = None, timeout: float | None = None
    ) -> GenerateResult:
        name, model = self._admit(request.model)
        self.limits.charge(context.current_tenant(), generate_budget(request, self.config))

        def run() -> list[GeneratedCompletion]:  # on the model's worker thread
            prompts = prompt_ids(request, model)
            return model.generate(
                prompts,
                max_new_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                n=request.n,
                seed=request.seed,
            )

        # An engine with continuous batching (vllm) gets concurrent requests at once; the hf engine takes
        # them in turn on the model's worker thread, between batched forwards.
        if engines.generates_concurrently(model):
            work = self._on_waiting_pool(run)
        else:
            work = self._batchers[name].run_on_worker(run)
        with self._tracking(), context.timed("generate"):
            completions = await _within(timeout, work)
        return GenerateResult(name, model.info.fingerprint, _answered_id(request, request_id), completions)

    # ---- internals ---------------------------------------------------------------------------------------

    async def _on_waiting_pool(self, fn: Callable[[], list[GeneratedCompletion]]) -> list[GeneratedCompletion]:
        if self._waiting_pool is None:
            self._waiting_pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="engine-wait")
        return await asyncio.get_running_loop().run_in_executor(self._waiting_pool, fn)

    def _admit(self, name: str):
        if not self._loaded:
            raise Unavailable("models are still loading; retry shortly")
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self._models.get(name)
        if model is None:
            served = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (served: {served})", field="model")
        ctx = context.current()
        if ctx is not None:
            ctx.model = name
        return name, model

    async def _compute(self, name: str, fingerprint: str, tasks: list) -> list[SequenceLogits]:
        """Cached sequences from the cache, the others from the batcher (which joins identical sequences
        in flight, from any request). No await between the lookup's end and the batcher's admission, so a
        sequence is either found finished or joined while running, never computed twice by this process."""
        keys = [sequence_key(fingerprint, task) for task in tasks]
        with context.timed("cache", record=self.cache.enabled):
            results = await self.cache.lookup(name, keys)
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            items = [(keys[i], tasks[i]) for i in missing]
            computed = await self._batchers[name].compute(items, tenant=context.current_tenant())
            for i, result in zip(missing, computed, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """Count the request as in flight (drain waits for the count to reach zero)."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()


def _sooner(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


async def _within(timeout: float | None, awaitable):
    """Await with a deadline; a passed deadline cancels the work (queued sequences are dropped)."""
    if timeout is None:
        return await awaitable
    if timeout <= 0:
        awaitable.close()
        raise DeadlineExceeded("the request's deadline had passed when it arrived")
    try:
        if sys.version_info >= (3, 11):  # the work runs in this task: wait_for would wrap it in a new one
            async with asyncio.timeout(timeout):
                return await awaitable
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"no result within the deadline ({timeout:.3g} s)") from None


def _answered_id(request: LogitsRequest | GenerateRequest, request_id: str | None) -> str:
    """The transport's resolved id; a direct caller (no transport) gets the body's, resolved the same way."""
    return request_id if request_id is not None else context.resolve_request_id(request.request_id, adopt=False)
