"""The learning-rate schedule against hand-computed values, and AdamW's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from dualdistill.trainer import TrainConfig
from dualdistill.trainer.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_to_the_floor():
    # warmup 2 of 10 steps, floor 0.1: (s+1)/2 for s < 2, then 0.1 + 0.9 * (1 + cos(pi (s-2)/8)) / 2
    expected = [0.5, 1.0] + [0.1 + 0.9 * (1 + math.cos(math.pi * (s - 2) / 8)) / 2 for s in range(2, 11)]
    assert [lr_factor(s, 2, 10, 0.1) for s in range(11)] == pytest.approx(expected)
    assert lr_factor(10, 2, 10, 0.1) == pytest.approx(0.1) and lr_factor(50, 2, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 0, 1, 0.0) == 1.0  # no warmup: the first step runs at the peak


def test_scheduler_steps_the_optimizer_lr_and_norms_get_no_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    config = TrainConfig(learning_rate=0.1, warmup_steps=1, weight_decay=0.01)
    optimizer = build_optimizer(model, config)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 3]  # the weight matrix; biases + norm
    scheduler = build_scheduler(optimizer, config, total_steps=3)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * lr_factor(s, 1, 3, 0.0) for s in range(3)])
