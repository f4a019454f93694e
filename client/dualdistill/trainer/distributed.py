"""Process-group setup for `torchrun` and the few collectives the trainer needs.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the trainer joins a process group,
gloo on CPU and nccl on CUDA, and wraps the student in DistributedDataParallel. Without those variables it
is a single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank facts from the torchrun environment (a single process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """'auto': cuda:LOCAL_RANK when CUDA is available, else cpu; 'cuda' means this rank's GPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(requested)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """torch.autocast to `dtype` on `device` (a no-op context when dtype is None): the student's and the
    local reference's forward."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def init(info: DistInfo, device: torch.device) -> bool:
    """Join the process group when running under torchrun; True when this call created it."""
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """[value of rank 0, value of rank 1, ...] on every rank ([value] in a single process)."""
    if not info.enabled:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's value, on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`values` summed over all ranks (one all_reduce on the tensor's device; itself when single-process)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values
