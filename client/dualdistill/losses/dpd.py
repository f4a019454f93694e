"""The Dual-level Preference Distillation loss: sequence-level DPO + token-level KD on both samples.

    L = w_dpo * L_DPO(chosen, rejected) + w_pos * KD(teacher || student on chosen)
                                        + w_neg * KD(teacher || student on rejected)

    dpd_loss(chosen_logits, rejected_logits, ..., config)      -> DPDLossOutput
      ├── sequence_logps + dpo_loss                            (skipped when w_dpo = 0)
      └── sparse_kd_loss on chosen / on rejected               (each skipped when its weight is 0)
    DPDLoss(config)                                            nn.Module

Chosen = positive (a teacher sample), rejected = negative (a student-SFT sample). The teacher's rows on
the negative tell the student, token by token, what the teacher would have said instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from dualdistill.bounds import check_choice, check_range
from dualdistill.losses.dpo import DPO_LOSS_TYPES, check_dpo_args, dpo_loss
from dualdistill.losses.logprobs import DEFAULT_CHUNK_SIZE, sequence_logps
from dualdistill.losses.sparse_kd import DIVERGENCES, sparse_kd_loss
from dualdistill.teacher_logits import TeacherLogits

__all__ = ["PRESETS", "DPDLoss", "DPDLossConfig", "DPDLossOutput", "dpd_loss"]


@dataclass
class DPDLossConfig:
    """Weights and settings of the three terms; every field is validated in __post_init__."""

    dpo_weight: float = field(default=1.0, metadata={"help": "w_dpo >= 0; 0 skips the DPO term entirely."})
    pos_weight: float = field(
        default=1.0, metadata={"help": "w_pos >= 0: KD on the chosen (positive) sample."}
    )
    neg_weight: float = field(
        default=1.0, metadata={"help": "w_neg >= 0: KD on the rejected (negative) sample; 0 skips it."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta > 0: scale of the implicit reward."})
    margin: float = field(
        default=0.0, metadata={"help": "DPO margin in reward units: chosen must beat rejected by this much."}
    )
    loss_type: str = field(default="sigmoid", metadata={"help": f"DPO loss, one of {DPO_LOSS_TYPES}."})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "cDPO label smoothing in [0, 0.5); sigmoid loss only."}
    )
    pos_divergence: str = field(
        default="forward_kl", metadata={"help": f"KD on positives, one of {DIVERGENCES}."}
    )
    neg_divergence: str = field(
        default="forward_kl", metadata={"help": f"KD on negatives, one of {DIVERGENCES}."}
    )
    alpha: float = field(
        default=0.1, metadata={"help": "Skew coefficient in [0, 1) of skew_forward/reverse_kl."}
    )
    jsd_beta: float = field(
        default=0.5, metadata={"help": "Generalised JSD beta in [0, 1]; 0 = forward KL, 1 = reverse KL."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Student softmax temperature > 0 for the KD terms."}
    )
    scale_by_temperature_squared: bool = field(
        default=False,
        metadata={"help": "Multiply the KD terms by T^2 (Hinton et al.) to keep gradient scale."},
    )
    chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE,
        metadata={"help": "Token rows per [chunk, V] fp32 temporary (memory knob)."},
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "DPO on mean instead of summed token log-probs; reference log-probs must match."},
    )

    def __post_init__(self) -> None:
        for name in ("dpo_weight", "pos_weight", "neg_weight"):
            check_range(name, getattr(self, name), 0.0)
        if self.dpo_weight == self.pos_weight == self.neg_weight == 0:
            raise ValueError("dpo_weight, pos_weight and neg_weight are all 0: at least one term must be on")
        check_dpo_args(self.beta, self.margin, self.loss_type, self.label_smoothing)
        check_choice("pos_divergence", self.pos_divergence, DIVERGENCES)
        check_choice("neg_divergence", self.neg_divergence, DIVERGENCES)
        check_range("alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_range("jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range("temperature", self.temperature, 0.0, low_open=True)
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size!r} must be an int >= 1")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DPDLossConfig:
        """A named configuration (PRESETS), with keyword overrides of any field."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is not defined; choose one of {', '.join(map(repr, PRESETS))}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown DPDLossConfig fields {unknown}; fields are {sorted(known)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, DPDLossConfig] = {
    # DPD: DPO (sigmoid, beta 0.1) + forward KL on positives and on negatives, weights 1 / 1 / 1.
    "dpd": DPDLossConfig(),
    # DistiLLM-2: skew forward KL on teacher samples, skew reverse KL on student samples, no DPO term.
    "distillm2": DPDLossConfig(
        dpo_weight=0.0, pos_divergence="skew_forward_kl", neg_divergence="skew_reverse_kl", alpha=0.1
    ),
    # Plain KD on the teacher's samples only (sequence-level KD with the teacher's token distributions).
    "kd-pos": DPDLossConfig(dpo_weight=0.0, neg_weight=0.0),
    # Plain DPO, the preference term alone.
    "dpo": DPDLossConfig(pos_weight=0.0, neg_weight=0.0),
}


@dataclass
class DPDLossOutput:
    """loss = w_dpo * dpo + w_pos * pos + w_neg * neg; skipped terms are 0 tensors without a graph."""

    loss: torch.Tensor
    dpo: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    metrics: dict[str, float]


def _response_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) response mask over label positions -> the logits rows that predict those labels."""
    rows = torch.zeros_like(response_mask, dtype=torch.bool)
    rows[:, :-1] = response_mask[:, 1:].to(torch.bool)
    return rows


def dpd_loss(
    chosen_logits: torch.Tensor,
    rejected_logits: torch.Tensor | None,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor | None,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor | None,
    teacher_chosen: TeacherLogits | None,
    teacher_rejected: TeacherLogits | None,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    config: DPDLossConfig | None = None,
) -> DPDLossOutput:
    """DPD loss on B (chosen, rejected) pairs.

    Shapes: chosen_logits (B, L, V) from chosen_ids (B, L); rejected_logits (B, L', V) from rejected_ids
    (B, L'). Masks (B, L) / (B, L') mark response tokens by label position (`sequence_logps`
    convention). teacher_chosen / teacher_rejected are aligned with the logits (TeacherLogits docstring);
    the KD terms use the rows where the teacher has a row AND the token is a response token.
    ref_*_logps (B,) are reference sequence scores in the same convention as the policy's (summed, or
    mean when config.length_normalize), e.g. `TeacherLogits.sequence_logps(mask, length_normalize)`.

    Inputs a zero-weight term does not need may be None: the DPO term needs both logits, ids, masks and
    ref log-probs; KD(pos) needs teacher_chosen; KD(neg) needs rejected logits, mask and teacher_rejected.

    Returns DPDLossOutput; metrics (floats, one device sync) hold the total and each active term, the
    DPO rewards/accuracies/logps and the number of KD tokens per side.
    """
    cfg = config if config is not None else DPDLossConfig()
    zero = torch.zeros((), dtype=torch.float32, device=chosen_logits.device)
    dpo_term, pos_term, neg_term = zero, zero, zero
    stats: dict[str, torch.Tensor] = {}
    kd_args = dict(
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        beta=cfg.jsd_beta,
        scale_by_temperature_squared=cfg.scale_by_temperature_squared,
        chunk_size=cfg.chunk_size,
    )
    if cfg.dpo_weight > 0:
        _require(
            "dpo_weight > 0",
            rejected_logits=rejected_logits,
            rejected_ids=rejected_ids,
            rejected_mask=rejected_mask,
            ref_chosen_logps=ref_chosen_logps,
            ref_rejected_logps=ref_rejected_logps,
        )
        policy_chosen = sequence_logps(
            chosen_logits, chosen_ids, chosen_mask, cfg.length_normalize, cfg.chunk_size
        )
        policy_rejected = sequence_logps(
            rejected_logits, rejected_ids, rejected_mask, cfg.length_normalize, cfg.chunk_size
        )
        dpo_term, dpo_stats = dpo_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=cfg.beta,
            margin=cfg.margin,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
        )
        stats["dpo/loss"] = dpo_term.detach()
        stats.update(dpo_stats)
    if cfg.pos_weight > 0:
        _require("pos_weight > 0", teacher_chosen=teacher_chosen)
        rows = _response_rows(chosen_mask)
        pos_term = sparse_kd_loss(chosen_logits, teacher_chosen, cfg.pos_divergence, mask=rows, **kd_args)
        stats["kd_pos/loss"] = pos_term.detach()
        stats["kd_pos/tokens"] = (teacher_chosen.mask & rows).sum()
    if cfg.neg_weight > 0:
        _require(
            "neg_weight > 0",
            rejected_logits=rejected_logits,
            rejected_mask=rejected_mask,
            teacher_rejected=teacher_rejected,
        )
        rows = _response_rows(rejected_mask)
        neg_term = sparse_kd_loss(rejected_logits, teacher_rejected, cfg.neg_divergence, mask=rows, **kd_args)
        stats["kd_neg/loss"] = neg_term.detach()
        stats["kd_neg/tokens"] = (teacher_rejected.mask & rows).sum()
    loss = cfg.dpo_weight * dpo_term + cfg.pos_weight * pos_term + cfg.neg_weight * neg_term
    stats = {"loss": loss.detach(), **stats}
    values = torch.stack([v.to(torch.float64) for v in stats.values()]).tolist()  # one sync for all
    return DPDLossOutput(loss, dpo_term, pos_term, neg_term, dict(zip(stats, values, strict=True)))


def _require(reason: str, **inputs: Any) -> None:
    missing = [name for name, value in inputs.items() if value is None]
    if missing:
        raise ValueError(f"{reason} needs {', '.join(missing)}; pass them or set that weight to 0")


class DPDLoss(nn.Module):
    """`dpd_loss` with a fixed DPDLossConfig (default: the "dpd" preset)."""

    def __init__(self, config: DPDLossConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DPDLossConfig.preset("dpd")

    def forward(
        self,
        chosen_logits: torch.Tensor,
        rejected_logits: torch.Tensor | None,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor | None,
        chosen_mask: torch.Tensor,
        rejected_mask: torch.Tensor | None,
        teacher_chosen: TeacherLogits | None,
        teacher_rejected: TeacherLogits | None,
        ref_chosen_logps: torch.Tensor | None,
        ref_rejected_logps: torch.Tensor | None,
    ) -> DPDLossOutput:
        return dpd_loss(
            chosen_logits,
            rejected_logits,
            chosen_ids,
            rejected_ids,
            chosen_mask,
            rejected_mask,
            teacher_chosen,
            teacher_rejected,
            ref_chosen_logps,
            ref_rejected_logps,
            self.config,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
