"""How the student is spread over ranks (`parallel`): a full copy per rank (DDP) or shards (FSDP2).

    prepare(model, config, info, device, autocast) -> StudentForward     before the optimizer is built
        activation_checkpointing: each decoder layer recomputes its activations in backward
        fsdp (world size > 1): fully_shard(every decoder layer), then fully_shard(the StudentForward root)
    wrap(forward, config, info, device) -> the module the loop calls      after the optimizer
        ddp (world size > 1): DistributedDataParallel(forward); fsdp: forward itself (already sharded)
    gradient_sync(module, enabled)       DDP no_sync / FSDP set_requires_gradient_sync, for accumulation
    is_sharded(module)                   True once fully_shard has run on it

Under FSDP each rank holds 1/world_size of every parameter, gradient and AdamW state (DTensors sharded on
dim 0); a layer's full weights exist only while it runs (all-gathered before its forward and again in
backward, freed after). The embeddings, final norm and LM head form the root's group, gathered for the
forward + fused loss. `fsdp_mixed_precision` gathers bf16 parameters and reduce-scatters float32
gradients (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)); the sharded master weights and
AdamW state stay float32.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from dualdistill.trainer import distributed as dd
from dualdistill.trainer.config import TrainConfig
from dualdistill.trainer.student import StudentForward


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's transformer blocks: modules of the classes HF marks as never to split
    (`_no_split_modules`, e.g. LlamaDecoderLayer), the natural unit of sharding and recomputation."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} names no decoder-layer class (_no_split_modules); parallel=fsdp and "
            "activation_checkpointing need one — use parallel=ddp and activation_checkpointing=false"
        )
    return layers


def prepare(
    model: Any, config: TrainConfig, info: dd.DistInfo, autocast: torch.dtype | None
) -> StudentForward:
    """The StudentForward the optimizer will see: checkpointed and, under fsdp with several ranks, sharded."""
    if config.activation_checkpointing:
        decoder_layers(model)  # refuse a model without layers before touching it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = StudentForward(model, config.fused_loss, autocast)
    if config.parallel != "fsdp":
        return forward
    if not info.enabled:
        print("parallel=fsdp in a single process: nothing to shard, training unsharded", file=sys.stderr)
        return forward
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if config.fsdp_mixed_precision:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(forward, mp_policy=policy)
    return forward


def wrap(forward: StudentForward, info: dd.DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP around an unsharded forward on several ranks; the forward itself otherwise."""
    if not info.enabled or is_sharded(forward):
        return forward
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(forward, device_ids=ids)


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def gradient_sync(module: torch.nn.Module, enabled: bool) -> Any:
    """A context in which backward syncs gradients across ranks (enabled) or only accumulates them."""
    if is_sharded(module):
        module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if enabled or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()
