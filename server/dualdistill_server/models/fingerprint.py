"""Model fingerprint: which exact function the served model computes, so results are cacheable under it.

fingerprint = sha256(canonical config JSON || for each state-dict tensor in name order: name, dtype,
shape, raw bytes || serving dtype || engine), first 16 hex chars. Two loads of the same files with the same
dtype give the same fingerprint; any changed weight, config field, serving dtype or engine gives another one
(the vllm engine hashes the weight files instead: engines/vllm/fingerprint.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

# Config keys that name where or with what a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_model_name_or_path", "transformers_version", "_commit_hash", "dtype", "torch_dtype"}
)


def canonical_config(config: Any) -> str:
    """The model config as canonical JSON (sorted keys, no whitespace), volatile keys and `_attn*` removed."""
    raw = config.to_dict()
    kept = {k: v for k, v in raw.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_attn")}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A uint8 view gives the raw bytes of any dtype (numpy has no bfloat16), hashed without a copy.
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def model_fingerprint(model: torch.nn.Module, config: Any, dtype: str, engine: str = "hf") -> str:
    """16 hex chars of sha256 over (canonical config, every state-dict tensor, serving dtype, engine)."""
    digest = hashlib.sha256()
    digest.update(canonical_config(config).encode("utf-8"))
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)], separators=(",", ":"))
        digest.update(header.encode("utf-8"))
        digest.update(_tensor_bytes(tensor))
    digest.update(dtype.encode("utf-8"))
    digest.update(f"|engine={engine}".encode())
    return digest.hexdigest()[:16]
