"""Checkpoints of an FSDP run: sharded state through PyTorch distributed checkpoint (DCP), and the
plain HF directory gathered from the shards.

    CHECKPOINT/sharded/.metadata, __0_0.distcp, __1_0.distcp ...    save_sharded / load_sharded
        {"model": every parameter's shards, "optimizer": AdamW state shards + param groups}; each rank
        writes and reads only its own shards, so no rank ever holds the whole model for a checkpoint
    hf_state_dict(forward) -> {HF parameter name: full tensor} on rank 0 ({} on the others)
        all ranks gather, rank 0 receives on the CPU: what `save_pretrained` writes at the end of a run

On the same world size a load restores every shard bit for bit; DCP can also reshard onto another world
size (the data position carries over, bit-exactness does not — as with DDP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SHARDED_DIR = "sharded"
_MODEL_PREFIX = "model."  # StudentForward keeps the HF model as its `model` attribute


def has_sharded_state(checkpoint: Path) -> bool:
    return (Path(checkpoint) / SHARDED_DIR / ".metadata").exists()


def save_sharded(checkpoint: Path, forward: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and the optimizer under CHECKPOINT/sharded (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(forward, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(Path(checkpoint) / SHARDED_DIR))


def load_sharded(checkpoint: Path, forward: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank reads its shards back into the sharded model and its optimizer (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(forward, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(Path(checkpoint) / SHARDED_DIR))
    set_state_dict(forward, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def hf_state_dict(forward: torch.nn.Module) -> dict[str, Any]:
    """The full weights under their HF names on rank 0, gathered shard by shard to the CPU (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(forward, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied parameter (an LM head sharing the embeddings) is kept under its first name only, as
    # save_pretrained keeps it: the gathered copies no longer share storage for it to notice
    aliases = {n for n, _ in forward.named_parameters(remove_duplicate=False)} - {
        n for n, _ in forward.named_parameters()
    }
    return {
        name[len(_MODEL_PREFIX) :]: tensor
        for name, tensor in full.items()
        if name.startswith(_MODEL_PREFIX) and name not in aliases
    }
