"""Sequence-level preference loss: DPO (Rafailov et al., NeurIPS 2023) and its IPO / hinge variants.

    dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)  pure function
    DPOLoss(beta, margin, loss_type, label_smoothing)                                             nn.Module

A batch is [chosen, rejected] pairs; each input is (B,) sequence log-probabilities
(`dualdistill.losses.sequence_logps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dualdistill.bounds import check_choice, check_range

__all__ = ["DPO_LOSS_TYPES", "DPOLoss", "dpo_loss"]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def check_dpo_args(
    beta: float, margin: float | torch.Tensor, loss_type: str, label_smoothing: float
) -> None:
    check_range("beta", beta, 0.0, low_open=True)
    if not isinstance(margin, torch.Tensor):  # per-pair (B,) margins are checked in dpo_loss
        check_range("margin", margin)
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    check_range("label_smoothing", label_smoothing, 0.0, 0.5, high_open=True)
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, got loss_type={loss_type!r}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    margin: float | torch.Tensor = 0.0,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO-family loss over B pairs.

        chosen_logratios   = pi_c - ref_c            rejected_logratios = pi_r - ref_r
        logits             = chosen_logratios - rejected_logratios
        sigmoid  (DPO; cDPO smoothing eps, Mitchell 2023):
                 z = beta * logits - margin
                 loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
        ipo      (Azar et al., AISTATS 2024):  loss = (logits - (1 + 2 * margin) / (2 * beta))^2
        hinge    (SLiC, Zhao et al. 2023):     loss = relu(1 - beta * logits + margin)

    `margin` is always in reward units (beta * logits): the chosen reward must beat the rejected one by
    `margin` (for ipo the target beta * logits moves from 1/2 to 1/2 + margin). Margin 0 and eps 0 give
    the TRL formulas. `margin` may also be a (B,) tensor of per-pair margins (e.g. a scaled score gap,
    as reward-model training uses per-pair margins); it carries no gradient.

    Args: four (B,) tensors of summed (or mean) sequence log-probabilities; references carry no grad.
    Returns: (loss scalar float32, metrics) with detached scalars `rewards/chosen`, `rewards/rejected`
        (beta * logratios, means), `rewards/margins`, `rewards/accuracies` (fraction chosen > rejected),
        `logps/chosen`, `logps/rejected` (policy means).
    """
    check_dpo_args(beta, margin, loss_type, label_smoothing)
    shape = tuple(policy_chosen_logps.shape)
    if policy_chosen_logps.dim() != 1:
        raise ValueError(f"sequence log-probabilities must be (B,), got policy_chosen_logps {shape}")
    others = {"policy_rejected_logps": policy_rejected_logps, "ref_chosen_logps": ref_chosen_logps}
    others["ref_rejected_logps"] = ref_rejected_logps
    for name, tensor in others.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} like policy_chosen_logps, got {tuple(tensor.shape)}"
            )
    dtype = torch.float64 if policy_chosen_logps.dtype == torch.float64 else torch.float32
    if isinstance(margin, torch.Tensor):
        if tuple(margin.shape) != shape:
            raise ValueError(f"per-pair margin must have shape {shape}, got {tuple(margin.shape)}")
        if not bool(torch.isfinite(margin).all()):
            raise ValueError("per-pair margin holds a non-finite value")
        margin = margin.to(device=policy_chosen_logps.device, dtype=dtype).detach()
    chosen_logratios = policy_chosen_logps.to(dtype) - ref_chosen_logps.to(dtype).detach()
    rejected_logratios = policy_rejected_logps.to(dtype) - ref_rejected_logps.to(dtype).detach()
    logits = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        z = beta * logits - margin
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (logits - (1 + 2 * margin) / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * logits + margin)
    # mean of an empty batch is NaN; sum * 0 keeps the graph and gives 0
    loss = losses.mean() if losses.numel() else losses.sum()
    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios
        rejected_rewards = beta * rejected_logratios
        metrics = {
            "rewards/chosen": _mean(chosen_rewards),
            "rewards/rejected": _mean(rejected_rewards),
            "rewards/margins": _mean(chosen_rewards - rejected_rewards),
            "rewards/accuracies": _mean((chosen_rewards > rejected_rewards).to(dtype)),
            "logps/chosen": _mean(policy_chosen_logps.to(dtype)),
            "logps/rejected": _mean(policy_rejected_logps.to(dtype)),
        }
    return loss, metrics


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()


class DPOLoss(nn.Module):
    """`dpo_loss` with its configuration fixed at construction (validated there)."""

    def __init__(
        self, beta: float = 0.1, margin: float = 0.0, loss_type: str = "sigmoid", label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        check_dpo_args(beta, margin, loss_type, label_smoothing)
        self.beta, self.margin = beta, margin
        self.loss_type, self.label_smoothing = loss_type, label_smoothing

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=self.beta,
            margin=self.margin,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, margin={self.margin}, loss_type={self.loss_type!r}, "
            f"label_smoothing={self.label_smoothing}"
        )
