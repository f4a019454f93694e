"""`--engine-arg KEY=VALUE`: vLLM engine arguments, checked against vLLM's own `EngineArgs` at start-up.

The server sets the arguments that its contract depends on, and refuses them as engine arguments:
`model` (given by --model), `tokenizer` (the handshake hashes the model's own), `max_logprobs` (from
--max-top-k) and `logprobs_mode` (the semantics need raw log-probabilities). It defaults the others that it
knows better than vLLM's defaults (`dtype` from --dtype, `max_model_len` from --max-seq-len, `seed` 0,
`enforce_eager` on CPU, where graph capture only slows the start), and passes every other key through
unchanged: `tensor_parallel_size`, `pipeline_parallel_size`, `distributed_executor_backend`,
`gpu_memory_utilization`, `quantization`, ...
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

RESERVED = {
    "model": "the model is the PATH of --model NAME=PATH",
    "tokenizer": "the served tokenizer is the model's own, which the tokenizer handshake hashes",
    "max_logprobs": "it is set from --max-top-k (the largest top_k a request may ask for, plus the ranks the "
    "tail is summed from)",
    "logprobs_mode": "the logits semantics need vLLM's raw log-probabilities (its default)",
}


def engine_arg_names() -> set[str]:
    """Every field of vLLM's EngineArgs dataclass (imports vLLM)."""
    from dualdistill_server.engines.vllm.environment import import_vllm

    import_vllm()
    from vllm.engine.arg_utils import EngineArgs

    return {field.name for field in dataclasses.fields(EngineArgs)}


def check_engine_args(engine_args: dict[str, Any]) -> None:
    """ValueError naming the first unknown or reserved key (with the closest vLLM names for a typo)."""
    names = engine_arg_names()
    for key in engine_args:
        if key in RESERVED:
            raise ValueError(f"engine argument {key!r} is set by the server: {RESERVED[key]}")
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown engine argument {key!r}: not a field of vLLM's EngineArgs{hint} "
                "(the names are those of `vllm serve --help` with '_' for '-')"
            )


def engine_kwargs(
    source: str, engine_args: dict[str, Any], *, dtype: str, max_model_len: int, max_top_k: int, on_cpu: bool
) -> dict[str, Any]:
    """The keyword arguments of vllm's EngineArgs for one model: the server's defaults, then the user's."""
    check_engine_args(engine_args)
    kwargs: dict[str, Any] = {"dtype": dtype, "max_model_len": max_model_len, "seed": 0, "disable_log_stats": True}
    if on_cpu:
        kwargs["enforce_eager"] = True
    kwargs.update(engine_args)
    from dualdistill_server.engines.vllm.logits import TAIL_RANKS

    kwargs.update(model=source, tokenizer=source, max_logprobs=max_top_k + TAIL_RANKS, logprobs_mode="raw_logprobs")
    return kwargs
