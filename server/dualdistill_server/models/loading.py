"""`load_model`: resolve a model path (directory, prepared alias, hub id), load it, describe it.

A path is tried as, in order: a prepared alias (`smollm2`, converted on first use), a local Hugging Face
directory, a hub id (needs network access). Each failure says what to do instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from dualdistill.protocol.tokenizer_hash import tokenizer_sha256
from dualdistill_server.models.fingerprint import model_fingerprint
from dualdistill_server.models.prepare import ALIASES, prepare_alias
from dualdistill_server.models.served import ServedModel
from dualdistill_server.models.types import ModelInfo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


def resolve_model_path(path: str) -> str:
    """A local directory (str) for an alias or directory; the hub id itself for a hub id."""
    if path in ALIASES:
        try:
            return str(prepare_alias(path))
        except FileNotFoundError as exc:  # the package that ships the weights is missing
            raise ModelLoadError(str(exc)) from exc
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} has no config.json; it is not a Hugging Face model directory")
        return str(local)
    if local.exists():
        raise ModelLoadError(f"{local} is a file; pass a Hugging Face model directory (or an alias: {sorted(ALIASES)})")
    if _HUB_ID.match(path):
        return path
    raise ModelLoadError(
        f"model path {path!r} is neither a directory, a prepared alias {sorted(ALIASES)}, nor a hub id (org/name)"
    )


def _from_pretrained(loader: Any, source: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        if Path(source).is_dir():
            raise ModelLoadError(f"could not load the {what} from {source}: {exc}") from exc
        raise ModelLoadError(
            f"could not fetch hub model {source!r} ({what}): {exc}. Hub ids work only with network access; "
            f"offline, download it elsewhere and pass its directory, or use a prepared alias {sorted(ALIASES)}"
        ) from exc


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _all_ids(*values: Any) -> set[int]:
    out: set[int] = set()
    for value in values:
        if isinstance(value, (list, tuple)):
            out.update(int(v) for v in value)
        elif value is not None:
            out.add(int(value))
    return out


def _context_length(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(
    name: str,
    path: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    max_seq_len: int = 4096,
    max_top_k: int = 256,
) -> ServedModel:
    """Load `path` (directory | alias | hub id) as `name`, on `device` in `dtype`, in eval mode.

    info.max_seq_len = min(model context length, max_seq_len); info.max_top_k = min(max_top_k, vocab).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    source = resolve_model_path(path)
    tokenizer = _from_pretrained(AutoTokenizer, source, "tokenizer")
    model = _from_pretrained(AutoModelForCausalLM, source, "model", dtype=DTYPES[dtype])
    torch_device = torch.device(device)
    model = model.to(device=torch_device, dtype=DTYPES[dtype]).eval()
    config = model.config

    output = model.get_output_embeddings()
    vocab_size = int(output.weight.shape[0]) if output is not None else int(config.vocab_size)
    context = _context_length(config)
    eos = _first_id(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else _first_id(config.eos_token_id)
    bos = _first_id(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else _first_id(config.bos_token_id)
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    info = ModelInfo(
        name=name,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        max_seq_len=min(context, max_seq_len) if context else max_seq_len,
        max_top_k=min(max_top_k, vocab_size),
        eos_token_id=eos,
        bos_token_id=bos,
        dtype=dtype,
        fingerprint=model_fingerprint(model, config, dtype, "hf"),
        engine="hf",
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return ServedModel(
        name,
        model,
        tokenizer,
        info,
        torch_device,
        stop_ids=_all_ids(tokenizer.eos_token_id, config.eos_token_id, generation_eos),
        pad_id=int(pad) if pad is not None and 0 <= int(pad) < vocab_size else 0,
    )
