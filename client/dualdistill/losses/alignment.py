"""The one label shift: targets and a loss mask aligned with the logit rows.

A causal model fed `input_ids` x[0..L-1] returns logits whose row j predicts x[j+1]. Every loss here takes
tensors already aligned with those rows, as torchtune's recipes build them
(`labels = hstack(labels[..., 1:], ignore)`):

    input_ids      x0    x1    x2    x3    x4    (pad)      response = x2..x4 (start = 2)
    response_mask  F     F     T     T     T     F          label positions
    labels         x1    x2    x3    x4    (pad) -100       labels[:, j] = x[j+1]; -100 off the response
    loss_mask      F     T     T     T     F     F          loss_mask[:, j] = response_mask[:, j+1]
    row j          0     1     2     3     4     5

TeacherLogits rows follow the same index (the teacher row predicting x[j+1] is row j), so `loss_mask`
selects the same rows of the student's logits, of the teacher and of `labels`.
"""

from __future__ import annotations

import torch

__all__ = ["IGNORE_INDEX", "shift_labels"]

IGNORE_INDEX = -100  # label of a row that predicts no response token (PyTorch's cross-entropy default)


def shift_labels(input_ids: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) input ids and a label-position response mask -> (labels, loss_mask), both aligned with logit rows.

    labels (B, L) int64: labels[:, j] = input_ids[:, j + 1] where loss_mask, IGNORE_INDEX elsewhere (and in
    the last row, which predicts nothing). loss_mask (B, L) bool: loss_mask[:, j] = response_mask[:, j + 1].
    response_mask[:, 0] is ignored: nothing predicts the first token.
    """
    if input_ids.dim() != 2 or tuple(response_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"input_ids and response_mask must both be (B, L); got {tuple(input_ids.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    loss_mask = torch.zeros_like(response_mask, dtype=torch.bool)
    loss_mask[:, :-1] = response_mask[:, 1:].to(torch.bool)
    labels = torch.full_like(input_ids, IGNORE_INDEX, dtype=torch.long)
    labels[:, :-1] = input_ids[:, 1:]
    return labels.masked_fill(~loss_mask, IGNORE_INDEX), loss_mask
