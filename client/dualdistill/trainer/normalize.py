"""Each micro-batch's share of the optimizer step's loss, so the update does not depend on the split.

A step's loss is

    L_step = w_dpo * (1 / P) * sum_pairs dpo_i
           + w_pos * (1 / N_pos) * sum_{chosen response tokens t} kd_t
           + w_neg * (1 / N_neg) * sum_{rejected response tokens t} kd_t

with P the step's pairs and N_pos / N_neg its chosen / rejected response tokens, over ALL micro-batches
and ranks (the normaliser transformers calls `num_items_in_batch`). A micro-batch's loss holds means
over its own pairs and tokens, so it is rescaled by (its pairs / P) and (its tokens / N): summing the
rescaled micro-batch losses over accumulation and ranks gives L_step exactly, whether the step is 1 x 4
pairs, 2 x 2 with accumulation or 2 ranks x 2. Weighting the token means by pairs instead (as before)
made long responses in a small micro-batch count more than the same tokens in a large one.

With kd_reduction = "sequence" the KD terms are already means over sequences, so they scale by pairs.
DDP averages gradients over ranks, hence the factor world_size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dualdistill.losses import DPDLossConfig, DPDLossOutput
from dualdistill.trainer.data import PairExample


@dataclass(frozen=True)
class StepCounts:
    """The normalisers of one optimizer step, over all of its micro-batches and ranks."""

    pairs: int  # P
    chosen_tokens: int  # N_pos: response tokens of the chosen samples
    rejected_tokens: int  # N_neg

    @classmethod
    def of(cls, examples: Sequence[PairExample]) -> StepCounts:
        return cls(
            pairs=len(examples),
            chosen_tokens=sum(len(e.chosen_ids) for e in examples),
            rejected_tokens=sum(len(e.rejected_ids) for e in examples),
        )


def step_share(
    out: DPDLossOutput, config: DPDLossConfig, pairs: int, step: StepCounts, world_size: int
) -> torch.Tensor:
    """The micro-batch's contribution to L_step (see the module docstring), times world_size for DDP.

    out: the micro-batch's DPDLossOutput (its `dpo`, `pos`, `neg` terms are means over its `pairs` pairs
    and its KD tokens, `metrics["kd_pos/tokens"]` / `["kd_neg/tokens"]`). pairs = 0 (a filler) gives a
    zero-weight loss that still carries the graph, so every DDP rank runs the same backward.
    """
    if pairs == 0:  # a filler: keeps the graph, contributes nothing
        return out.loss * 0.0
    pair_share = pairs / max(step.pairs, 1)
    loss = config.dpo_weight * out.dpo * pair_share
    for side, weight, total in (("pos", config.pos_weight, step.chosen_tokens),
                                ("neg", config.neg_weight, step.rejected_tokens)):  # fmt: skip
        if weight == 0:
            continue
        term = getattr(out, side)
        if config.kd_reduction == "token":
            tokens = out.metrics[f"kd_{side}/tokens"].to(term.dtype)
            share = tokens / max(total, 1)
        else:
            share = pair_share
        loss = loss + weight * term * share
    return loss * world_size
