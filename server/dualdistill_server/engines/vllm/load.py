"""`load_vllm_model`: resolve the path as the hf engine does, start a vLLM engine on it, describe it.

The tokenizer is loaded here with transformers as well (vLLM loads its own copy for its stop handling):
the handshake hash, the chat template and decoding must be exactly those of the hf engine, and the
logits path sends token ids only. Any failure of vLLM to build the engine becomes a ModelLoadError that
carries vLLM's message, so the server logs it and exits 1 instead of serving without the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dualdistill.protocol.tokenizer_hash import tokenizer_sha256
from dualdistill_server.engines.vllm.args import engine_kwargs
from dualdistill_server.engines.vllm.environment import cpu_only, import_vllm
from dualdistill_server.engines.vllm.fingerprint import files_fingerprint
from dualdistill_server.engines.vllm.loop import EngineLoop
from dualdistill_server.engines.vllm.model import VllmModel
from dualdistill_server.models.loading import (
    ModelLoadError,
    _all_ids,
    _context_length,
    _first_id,
    resolve_model_path,
)
from dualdistill_server.models.types import ModelInfo

log = logging.getLogger(__name__)


def _local_directory(source: str) -> Path:
    """A directory for `source` (a hub id is fetched into the hub cache first, as vLLM would)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, ...
        raise ModelLoadError(f"could not fetch hub model {source!r}: {exc}; pass a local directory instead") from exc


def _start_engine(name: str, kwargs: dict[str, Any]) -> Any:
    import_vllm()
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    try:
        return LLMEngine.from_engine_args(EngineArgs(**kwargs))
    except Exception as exc:
        raise ModelLoadError(f"vLLM could not start model {name!r} from {kwargs['model']}: {type(exc).__name__}: {exc}") from exc


def load_vllm_model(
    name: str,
    path: str,
    *,
    dtype: str = "float32",
    max_seq_len: int = 4096,
    max_top_k: int = 256,
    engine_args: dict[str, Any] | None = None,
) -> VllmModel:
    """Load `path` (directory | alias | hub id) as `name` on a vLLM engine in this process."""
    from transformers import AutoConfig, AutoTokenizer

    directory = _local_directory(resolve_model_path(path))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = AutoConfig.from_pretrained(directory)
    context = _context_length(config)
    kwargs = engine_kwargs(
        str(directory), dict(engine_args or {}), dtype=dtype, max_top_k=max_top_k, on_cpu=cpu_only(),
        max_model_len=min(context, max_seq_len) if context else max_seq_len,
    )
    engine = _start_engine(name, kwargs)
    model_config = engine.vllm_config.model_config
    served_dtype = str(model_config.dtype).removeprefix("torch.")
    vocab_size = int(model_config.get_vocab_size())
    eos = _first_id(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else _first_id(config.eos_token_id)
    bos = _first_id(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else _first_id(config.bos_token_id)
    generation_eos = None
    try:
        from transformers import GenerationConfig

        generation_eos = GenerationConfig.from_pretrained(directory).eos_token_id
    except OSError:  # no generation_config.json
        pass
    info = ModelInfo(
        name=name,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        max_seq_len=int(model_config.max_model_len),
        max_top_k=min(max_top_k, vocab_size),
        eos_token_id=eos,
        bos_token_id=bos,
        dtype=served_dtype,
        fingerprint=files_fingerprint(directory, config, served_dtype, "vllm"),
        engine="vllm",
    )
    stop_ids = _all_ids(tokenizer.eos_token_id, config.eos_token_id, generation_eos)
    return VllmModel(name, EngineLoop(engine, name), tokenizer, info, stop_ids=stop_ids)
