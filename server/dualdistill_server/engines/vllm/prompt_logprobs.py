"""A request's prompt logprobs as three numpy arrays, taken from vLLM's engine before it makes Python lists.

vLLM's engine core hands each finished prefill's prompt logprobs to the front end as `LogprobsTensors`
(vllm/v1/outputs.py: CPU tensors, one block for the whole prompt, whatever the prefill chunking):

    logprob_token_ids     (P, 1 + r) int32    P = prompt length - 1 (position 0 has none); entry 0 is the
    logprobs              (P, 1 + r) float32  prompt token itself, entries 1.. the top r in rank order
    selected_token_ranks  (P,)       int32    the prompt token's 1-based rank over the vocab

vLLM's output processor (vllm/v1/engine/logprobs.py, `_update_prompt_logprobs`) then turns them into
Python objects: `.tolist()` of every entry and a Python loop over every position and entry that appends
to the lists of a `FlatLogprobs`. At r = 256 ranks (top_k 128 + the tail's ranks) that costs on the order
of 100 us of CPU per position, far more than the forward of a small teacher on a GPU.

`PromptLogprobsTap` takes the tensors out of the engine core's outputs (`engine.engine_core.get_output`,
called by `LLMEngine.step`) for the requests it is asked to, before the output processor sees them; the
request's `RequestOutput.prompt_logprobs` then holds only position 0's empty entry. `from_tensors` is a
zero-copy view; `from_flat` reads the same arrays out of a `FlatLogprobs` (the path without the tap, and
the reference the tests compare with: float32 -> Python float -> float32 is exact, so both give the same
bits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptLogprobArrays:
    """Prompt logprobs of positions 1..P of one request; row j is position j + 1."""

    token_ids: np.ndarray  # (P, 1 + r) integer ids: the prompt token, then the top r in rank order
    logprobs: np.ndarray  # (P, 1 + r) float32 log-probabilities of those ids
    token_ranks: np.ndarray  # (P,) integer 1-based rank of the prompt token over the vocab

    @property
    def positions(self) -> int:
        return int(self.logprobs.shape[0])

    @classmethod
    def from_tensors(cls, chunks: list[Any]) -> PromptLogprobArrays:
        """One or more `LogprobsTensors` of consecutive positions -> arrays (views when there is one)."""
        parts = [(c.logprob_token_ids.numpy(), c.logprobs.numpy(), c.selected_token_ranks.numpy()) for c in chunks]
        if len(parts) == 1:
            return cls(*parts[0])
        return cls(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    @classmethod
    def from_flat(cls, flat: Any, width: int) -> PromptLogprobArrays:
        """A `FlatLogprobs` whose positions >= 1 hold `width` entries each -> arrays (RuntimeError otherwise)."""
        if flat is None or not hasattr(flat, "start_indices"):
            raise RuntimeError(f"vLLM returned no flat prompt logprobs (got {type(flat).__name__})")
        first = flat.start_indices[1] if len(flat) > 1 else len(flat.token_ids)  # position 0 has no entries
        positions = len(flat) - 1
        if len(flat.token_ids) - first != positions * width:
            raise RuntimeError(
                f"vLLM returned {len(flat.token_ids) - first} prompt logprob entries for {positions} positions; "
                f"expected {width} per position"
            )
        token_ids = np.asarray(flat.token_ids[first:], dtype=np.int64).reshape(positions, width)
        logprobs = np.asarray(flat.logprobs[first:], dtype=np.float32).reshape(positions, width)
        ranks = np.asarray(flat.ranks[first::width], dtype=np.int64)
        return cls(token_ids, logprobs, ranks)


class PromptLogprobsTap:
    """Collects the prompt-logprob tensors of the requests it `watch`es from one LLMEngine's core outputs.

    Used from the engine's step thread only (like the engine itself): `watch` before `add_request`,
    `take` once the request has finished. `installed` is False where this vLLM's engine has no
    `engine_core.get_output` to wrap; the engine then works as before (prompt logprobs as FlatLogprobs).
    """

    def __init__(self, engine: Any) -> None:
        self._chunks: dict[str, list[Any]] = {}
        self._keep: set[str] = set()  # watched requests whose tensors also go on to vLLM's output processor
        core = getattr(engine, "engine_core", None)
        self._get_output = getattr(core, "get_output", None)
        self.installed = self._get_output is not None
        if self.installed:
            core.get_output = self._tapped_get_output  # an instance attribute: only this engine's core
        else:
            log.warning("this vLLM has no engine_core.get_output: prompt logprobs go through vLLM's Python lists")

    def watch(self, request_id: str, *, keep_flat: bool = False) -> None:
        """Take this request's prompt logprobs (and leave them to vLLM as well when `keep_flat`)."""
        self._chunks[request_id] = []
        if keep_flat:
            self._keep.add(request_id)

    def take(self, request_id: str) -> PromptLogprobArrays | None:
        """The request's arrays (None if it was not watched or vLLM produced none); forgets the request."""
        chunks = self._chunks.pop(request_id, None)
        self._keep.discard(request_id)
        return PromptLogprobArrays.from_tensors(chunks) if chunks else None

    def _tapped_get_output(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._get_output(*args, **kwargs)
        for output in outputs.outputs:
            tensors = output.new_prompt_logprobs_tensors
            if tensors is None:
                continue
            chunks = self._chunks.get(output.request_id)
            if chunks is not None:
                chunks.append(tensors)
                if output.request_id not in self._keep:
                    output.new_prompt_logprobs_tensors = None
        return outputs
