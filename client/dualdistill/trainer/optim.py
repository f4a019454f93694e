"""AdamW and the learning-rate schedule: linear warmup, then cosine decay to a floor.

    factor(s) = (s + 1) / W                                          s < W      (W = warmup_steps)
    factor(s) = r + (1 - r) * (1 + cos(pi * (s - W) / max(1, N - W))) / 2   s >= W  (N = total steps,
                                                                               r = min_lr_ratio)
    lr(s) = learning_rate * factor(s), s = optimizer steps already taken (the lr of step s + 1)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dualdistill.trainer.config import TrainConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: Any, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms (1-D tensors) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    def factor(step: int) -> float:
        return lr_factor(step, config.warmup_steps, total_steps, config.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
