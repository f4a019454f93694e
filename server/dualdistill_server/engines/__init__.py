"""Engines: what computes a served model. `hf` (default; models/served.py) or `vllm` (engines/vllm).

`load_served_model` is the one place that picks the engine from ServerConfig.engine; `check_settings`
runs at start-up, before any port is bound, so a bad engine setting exits 2 naming the setting.
"""

from __future__ import annotations

from typing import Any

from dualdistill_server.engines.base import (
    ENGINES,
    EngineModel,
    PendingLogits,
    check_tasks,
    close,
    generates_concurrently,
    logits_starter,
    on_failure,
    warm_up,
)

__all__ = [
    "ENGINES",
    "EngineModel",
    "PendingLogits",
    "check_settings",
    "check_tasks",
    "close",
    "generates_concurrently",
    "load_served_model",
    "logits_starter",
    "on_failure",
    "warm_up",
]


def check_settings(engine: str, engine_args: dict[str, Any]) -> None:
    """ValueError for an unknown engine, engine arguments without --engine vllm, or an unknown argument
    (ImportError, with the install command, when --engine vllm finds no vLLM)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "hf" and engine_args:
        raise ValueError(
            f"--engine-arg ({', '.join(sorted(engine_args))}) applies to --engine vllm only; the hf engine has none"
        )
    if engine == "vllm":
        from dualdistill_server.engines.vllm.args import check_engine_args

        check_engine_args(engine_args)


def load_served_model(config: Any, name: str, path: str) -> EngineModel:
    """Load one --model NAME=PATH with the configured engine, device, dtype and limits."""
    if config.engine == "vllm":
        from dualdistill_server.engines.vllm import load_vllm_model

        return load_vllm_model(
            name, path, dtype=config.dtype, max_seq_len=config.max_seq_len, max_top_k=config.max_top_k,
            engine_args=config.engine_args,
        )
    from dualdistill_server.models import load_model

    return load_model(
        name, path, device=config.device, dtype=config.dtype, max_seq_len=config.max_seq_len,
        max_top_k=config.max_top_k,
    )
