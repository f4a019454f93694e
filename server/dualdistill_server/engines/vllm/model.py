"""`VllmModel`: a served model computed by vLLM's engine (engines/base.py's interface).

    start_logits(tasks)   ─> one prompt-logprobs request per task ─┐
    generate(prompts)     ─> one request per (prompt, sample)  ────┼─> EngineLoop (one step thread)
                                                                   │    continuous batching
    futures of the call (awaited on the server's event loop) <─────┘
    compute_logits(tasks) = start_logits(tasks), waited for on the calling thread

What vLLM cannot compute exactly is refused before any work (`check_tasks`, a 422 / INVALID_ARGUMENT):
vLLM's prompt logprobs ignore the sampling temperature ("prompt tokens skip sampling processors",
vllm/v1/worker/gpu_model_runner.py) and carry only the top-k, so temperature != 1 and mode "sample"
(which draws from the full distribution) would silently be other numbers.

The prompt logprobs of a logits task reach `sequence_logits` as numpy arrays taken from the engine core's
tensors (engines/vllm/prompt_logprobs.py), never as vLLM's per-entry Python lists; `prompt_logprobs_as =
"flat"` takes vLLM's own FlatLogprobs path instead (bench/vllm_conversion.py compares the two).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.engines.base import PendingLogits
from dualdistill_server.engines.vllm.generation import finished_row, plan_rows, row_params
from dualdistill_server.engines.vllm.logits import fetched_ranks, prompt_logprob_params, sequence_logits
from dualdistill_server.engines.vllm.loop import EngineLoop, Finished, PromptLogprobsAs
from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays
from dualdistill_server.errors import InvalidArgument
from dualdistill_server.models.types import GeneratedCompletion, LogitsTask, ModelInfo

_WHAT_TO_DO = "serve this model with --engine hf for that"


class VllmModel:
    """One model on one vLLM engine. Thread-safe: every call may come from any thread."""

    concurrent_generate = True  # the engine batches concurrent generate calls itself
    prompt_logprobs_as: PromptLogprobsAs = "arrays"  # how logits tasks get their prompt logprobs (module doc)

    def __init__(self, name: str, loop: EngineLoop, tokenizer: Any, info: ModelInfo, *, stop_ids: set[int]) -> None:
        self.name = name
        self.info = info
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self._loop = loop
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads

    # -- logits ---------------------------------------------------------------------------------------
    def check_tasks(self, tasks: list[LogitsTask]) -> None:
        """InvalidArgument for what vLLM's prompt logprobs cannot give exactly (see the module doc)."""
        for task in tasks:
            if task.params.mode != "topk":
                raise InvalidArgument(
                    f"mode {task.params.mode!r} needs the full next-token distribution, which the vllm engine of model "
                    f"{self.name!r} does not return (it returns the top-k only); use mode 'topk', or "
                    f"{_WHAT_TO_DO}",
                    field="mode",
                )
            if task.params.temperature != 1.0:
                raise InvalidArgument(
                    f"temperature {task.params.temperature:g}: the vllm engine of model {self.name!r} computes prompt "
                    "log-probabilities at temperature 1 only (vLLM does not apply temperature to them); send "
                    f"temperature 1 and apply the temperature in the loss, or {_WHAT_TO_DO}",
                    field="temperature",
                )

    def start_logits(self, tasks: list[LogitsTask]) -> PendingLogits:
        """All tasks submitted at once (vLLM batches their prefills); `finish()` collects them in order.
        The batcher calls this on the event loop and awaits the futures there (engines/base.py)."""
        self.check_tasks(tasks)
        from vllm.inputs import TokensPrompt

        vocab = self.info.vocab_size
        futures = [
            self._loop.submit(
                TokensPrompt(prompt_token_ids=task.token_ids.tolist()),
                prompt_logprob_params(fetched_ranks(task.params.top_k, vocab)),
                prompt_logprobs=self.prompt_logprobs_as,
            )
            for task in tasks
        ]

        def finish() -> list[SequenceLogits]:
            return [
                sequence_logits(prompt_arrays(finished, 1 + fetched_ranks(task.params.top_k, vocab)), task, vocab)
                for finished, task in zip(_results(futures), tasks, strict=True)
            ]

        return PendingLogits(futures, finish)

    def compute_logits(self, tasks: list[LogitsTask]) -> list[SequenceLogits]:
        """`start_logits`, waited for on the calling thread."""
        return self.start_logits(tasks).finish()

    # -- completions ------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float, n: int, seed: int
    ) -> list[GeneratedCompletion]:
        """n completions per prompt, ordered by prompt then sample (engines/vllm/generation.py)."""
        if n < 1 or max_new_tokens < 0:
            raise ValueError(f"need n >= 1 and max_new_tokens >= 0, got n={n}, max_new_tokens={max_new_tokens}")
        from vllm.inputs import TokensPrompt

        prompts = [[int(i) for i in prompt] for prompt in prompts]
        rows = plan_rows(prompts, n, seed, max_new_tokens, self.info.max_seq_len)
        futures: list[Future | None] = [
            None if budget <= 0 else self._loop.submit(
                TokensPrompt(prompt_token_ids=prompts[p]),
                row_params(budget=budget, temperature=temperature, top_p=top_p, seed=row_seed, stop_ids=self.stop_ids),
            )
            for p, budget, row_seed in rows
        ]
        outputs = [done.output for done in _results([f for f in futures if f is not None])]
        completions, finished = [], iter(outputs)
        for (p, _, _), future in zip(rows, futures, strict=True):
            ids, reason = ([], "length") if future is None else finished_row(next(finished), self.stop_ids)
            completions.append(
                GeneratedCompletion(p, list(prompts[p]), ids, self.decode(ids), reason)
            )
        return completions

    # -- text -------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer.encode(text))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; send the prompt as text or token_ids instead")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(f"messages[{index}] must be an object with 'role' and 'content'")
        with self._tokenizer_lock:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- lifecycle --------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Build what vLLM compiles on first use before a request waits for it: the rank kernel of its
        prompt logprobs (torch.compile, with a dynamic length: one logits call builds it for every length).
        Without this the first requests after the start waited about 2.5 s on 2 CPU cores, every request
        in flight with them (bench/vllm_service.py's load run)."""
        ids = np.arange(min(self.info.vocab_size, 8), dtype=np.int64)
        self.compute_logits([LogitsTask(token_ids=ids, start=1, params=LogitsParams(top_k=self.info.max_top_k))])

    def on_failure(self, listener) -> None:
        self._loop.on_failure(listener)

    def close(self) -> None:
        self._loop.close()


def prompt_arrays(finished: Finished, width: int) -> PromptLogprobArrays:
    """The tapped arrays, or (where the tap did not apply) those read out of vLLM's FlatLogprobs."""
    if finished.prompt_logprobs is not None:
        return finished.prompt_logprobs
    return PromptLogprobArrays.from_flat(finished.output.prompt_logprobs, width)


def _results(futures: list[Future]) -> list[Any]:
    """Every future's result, in order; the first failure is raised after all have settled, so no request
    of this call is still running in the engine when the call returns."""
    errors = []
    for future in futures:
        if future.exception() is not None:
            errors.append(future.exception())
    if errors:
        raise errors[0]
    return [future.result() for future in futures]
