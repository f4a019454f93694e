"""The Dual-level Preference Distillation loss: sequence-level DPO + token-level KD on both samples.

    L = w_dpo * L_DPO(chosen, rejected) + w_pos * KD(teacher || student on chosen)
                                        + w_neg * KD(teacher || student on rejected)

    dpd_loss(logits (2B, L, V), DPDBatch, config)              -> DPDLossOutput (tensors only)
      ├── sequence_logps + dpo_loss                            (skipped when w_dpo = 0)
      └── sparse_kd_loss on chosen / on rejected               (each skipped when its weight is 0)
    DPDLoss(config)                                            nn.Module

The batch is stacked on the batch dimension, [chosen; rejected] (rows 0..B-1 chosen, B..2B-1 rejected, as
Liger's preference losses take it), and every tensor is aligned with the logit rows (`shift_labels`).
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
from dualdistill.losses.sparse_kd import DIVERGENCES, KD_REDUCTIONS, sparse_kd_loss
from dualdistill.teacher_logits import TeacherLogits

MARGIN_MODES = ("fixed", "score-gap")

__all__ = ["MARGIN_MODES", "PRESETS", "DPDBatch", "DPDLoss", "DPDLossConfig", "DPDLossOutput", "dpd_loss"]


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
    margin_mode: str = field(
        default="fixed",
        metadata={
            "help": f"DPO margin per pair, one of {MARGIN_MODES}: fixed = `margin`; score-gap = `margin` + "
            "margin_scale * (chosen_score - rejected_score) of each pair (DPDBatch.score_gaps)."
        },
    )
    margin_scale: float = field(
        default=1.0, metadata={"help": "Factor >= 0 on each pair's score gap (margin_mode='score-gap')."}
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
    kd_reduction: str = field(
        default="token",
        metadata={
            "help": f"KD reduction per side, one of {KD_REDUCTIONS}: token = mean over the side's KD tokens; "
            "sequence = each sequence's token mean, then the mean over sequences (DistiLLM-2)."
        },
    )
    scale_by_temperature_squared: bool = field(
        default=False,
        metadata={"help": "Multiply the KD terms by T^2 (Hinton et al.) to keep gradient scale."},
    )
    chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE,
        metadata={"help": "Token rows per [chunk, V] fp32 temporary (memory knob)."},
    )
    fused_chunk_mib: float = field(
        default=64.0,
        metadata={
            "help": "fused_dpd_loss only: the most MiB one [chunk, V] fp32 buffer may take; fewer rows than "
            "chunk_size per chunk at large V (64 MiB = 110 rows at V = 151,936)."
        },
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
        check_choice("margin_mode", self.margin_mode, MARGIN_MODES)
        check_range("margin_scale", self.margin_scale, 0.0)
        check_choice("pos_divergence", self.pos_divergence, DIVERGENCES)
        check_choice("neg_divergence", self.neg_divergence, DIVERGENCES)
        check_range("alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_range("jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range("temperature", self.temperature, 0.0, low_open=True)
        check_choice("kd_reduction", self.kd_reduction, KD_REDUCTIONS)
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size!r} must be an int >= 1")
        check_range("fused_chunk_mib", self.fused_chunk_mib, 0.0, low_open=True)

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
    # DistiLLM-2: skew forward KL on teacher samples, skew reverse KL on student samples (the student
    # detached inside the mixture, as DistiLLM-2's trainer does), no DPO term.
    "distillm2": DPDLossConfig(
        dpo_weight=0.0, pos_divergence="skew_forward_kl", neg_divergence="skew_reverse_kl", alpha=0.1,
        kd_reduction="sequence",
    ),
    # Plain KD on the teacher's samples only (sequence-level KD with the teacher's token distributions).
    "kd-pos": DPDLossConfig(dpo_weight=0.0, neg_weight=0.0),
    # Plain DPO, the preference term alone.
    "dpo": DPDLossConfig(pos_weight=0.0, neg_weight=0.0),
}


@dataclass
class DPDBatch:
    """B preference pairs stacked [chosen; rejected] on the batch dim, aligned with the logit rows.

    labels (2B, L) int64: the token each logit row predicts (`shift_labels`; IGNORE_INDEX off the response).
    loss_mask (2B, L) bool: the response rows (DPO sums them; KD uses those that also have a teacher row).
    teacher: TeacherLogits of the same 2B rows; None when both KD weights are 0.
    ref_logps (2B,): reference sequence scores in the policy's convention (summed, or the mean when the
        config has length_normalize), e.g. `teacher.sequence_logps(loss_mask)`; None when w_dpo = 0.
    score_gaps (B,): each pair's chosen_score - rejected_score (from the pairs file); needed only by
        margin_mode='score-gap', which makes the pair's DPO margin `margin + margin_scale * score_gap`.
    """

    labels: torch.Tensor
    loss_mask: torch.Tensor
    teacher: TeacherLogits | None = None
    ref_logps: torch.Tensor | None = None
    score_gaps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.labels.dim() != 2 or tuple(self.loss_mask.shape) != tuple(self.labels.shape):
            raise ValueError(
                f"labels and loss_mask must both be (2B, L); got {tuple(self.labels.shape)} and "
                f"{tuple(self.loss_mask.shape)}"
            )
        if self.labels.shape[0] % 2:
            raise ValueError(
                f"a stacked [chosen; rejected] batch has an even number of rows, got {self.labels.shape[0]}"
            )
        if self.teacher is not None and (self.teacher.batch_size, self.teacher.seq_len) != tuple(
            self.labels.shape
        ):
            raise ValueError(
                f"teacher rows (2B, L) = {(self.teacher.batch_size, self.teacher.seq_len)} do not match labels "
                f"{tuple(self.labels.shape)}; build one TeacherLogits for [chosen; rejected] with the same L"
            )
        if self.ref_logps is not None and tuple(self.ref_logps.shape) != (self.labels.shape[0],):
            raise ValueError(
                f"ref_logps must be (2B,) = ({self.labels.shape[0]},), got {tuple(self.ref_logps.shape)}"
            )

        if self.score_gaps is not None and tuple(self.score_gaps.shape) != (self.labels.shape[0] // 2,):
            raise ValueError(
                f"score_gaps must be (B,) = ({self.labels.shape[0] // 2},), got {tuple(self.score_gaps.shape)}"
            )

    @property
    def num_pairs(self) -> int:
        return self.labels.shape[0] // 2


@dataclass
class DPDLossOutput:
    """loss = w_dpo * dpo + w_pos * pos + w_neg * neg; skipped terms are 0 tensors without a graph.

    Every field is a tensor (metrics detached, 0-dim): nothing here syncs with the host. `host_metrics()`
    copies the metrics to floats in one sync; a trainer sums them over its micro-batches first.
    """

    loss: torch.Tensor
    dpo: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    metrics: dict[str, torch.Tensor]

    def host_metrics(self) -> dict[str, float]:
        values = torch.stack([v.to(torch.float64) for v in self.metrics.values()]).tolist()  # one sync
        return dict(zip(self.metrics, values, strict=True))


def dpd_loss(logits: torch.Tensor, batch: DPDBatch, config: DPDLossConfig | None = None) -> DPDLossOutput:
    """DPD loss on B pairs stacked [chosen; rejected].

    Shapes: logits (2B, L, V), any float dtype, aligned with `batch` (DPDBatch). The KD terms use the
    rows where the teacher has a row AND loss_mask is set. Inputs a zero-weight term does not need may be
    None: the DPO term needs batch.ref_logps; the KD terms need batch.teacher.

    Returns DPDLossOutput; its metrics (tensors) hold the total and each active term, the DPO
    rewards/accuracies/logps and the number of KD tokens per side.
    """
    cfg = config if config is not None else DPDLossConfig()
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch.labels.shape):
        raise ValueError(
            f"logits must be (2B, L, V) with (2B, L) = {tuple(batch.labels.shape)}, got {tuple(logits.shape)}"
        )
    check_inputs(cfg, batch)
    policy = None
    if cfg.dpo_weight > 0:
        policy = sequence_logps(logits, batch.labels, batch.loss_mask, cfg.length_normalize, cfg.chunk_size)
    b = batch.num_pairs
    kd_args = dict(
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        beta=cfg.jsd_beta,
        scale_by_temperature_squared=cfg.scale_by_temperature_squared,
        chunk_size=cfg.chunk_size,
        reduction=cfg.kd_reduction,
    )
    kd: dict[str, torch.Tensor] = {}
    for side, rows, weight, divergence in kd_sides(cfg, b):
        if weight > 0:
            kd[side] = sparse_kd_loss(
                logits[rows], batch.teacher[rows], divergence, mask=batch.loss_mask[rows], **kd_args
            )
    return combine_terms(cfg, batch, policy, kd, logits.device)


def kd_sides(cfg: DPDLossConfig, b: int) -> tuple[tuple[str, slice, float, str], ...]:
    """(name, rows of the stacked batch, weight, divergence) of the two KD terms."""
    return (
        ("pos", slice(0, b), cfg.pos_weight, cfg.pos_divergence),
        ("neg", slice(b, 2 * b), cfg.neg_weight, cfg.neg_divergence),
    )


def check_inputs(cfg: DPDLossConfig, batch: DPDBatch) -> None:
    if cfg.dpo_weight > 0 and batch.ref_logps is None:
        raise ValueError("dpo_weight > 0 needs ref_logps; pass them or set that weight to 0")
    for side in ("pos", "neg"):
        if getattr(cfg, f"{side}_weight") > 0 and batch.teacher is None:
            raise ValueError(f"{side}_weight > 0 needs teacher; pass it or set that weight to 0")
    if cfg.dpo_weight > 0 and cfg.margin_mode == "score-gap" and batch.score_gaps is None:
        raise ValueError("margin_mode='score-gap' needs score_gaps (B,) in the batch; pass them or use 'fixed'")


def pair_margins(cfg: DPDLossConfig, batch: DPDBatch) -> float | torch.Tensor:
    """The DPO margin: cfg.margin, or per pair (B,) margin + margin_scale * score_gap."""
    if cfg.margin_mode == "fixed":
        return cfg.margin
    return cfg.margin + cfg.margin_scale * batch.score_gaps.detach()


def combine_terms(
    cfg: DPDLossConfig,
    batch: DPDBatch,
    policy_logps: torch.Tensor | None,
    kd: dict[str, torch.Tensor],
    device: torch.device,
) -> DPDLossOutput:
    """The weighted total and the metrics, from the policy's (2B,) sequence log-probs and the KD terms."""
    zero = torch.zeros((), dtype=torch.float32, device=device)
    b = batch.num_pairs
    stats: dict[str, torch.Tensor] = {}
    dpo_term = zero
    if policy_logps is not None:
        ref = batch.ref_logps
        dpo_term, dpo_stats = dpo_loss(
            policy_logps[:b],
            policy_logps[b:],
            ref[:b],
            ref[b:],
            beta=cfg.beta,
            margin=pair_margins(cfg, batch),
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
        )
        stats["dpo/loss"] = dpo_term.detach()
        stats.update(dpo_stats)
    for side, rows, _, _ in kd_sides(cfg, b):
        if side in kd:
            stats[f"kd_{side}/loss"] = kd[side].detach()
            stats[f"kd_{side}/tokens"] = (batch.teacher.mask[rows] & batch.loss_mask[rows]).sum()
    pos_term, neg_term = kd.get("pos", zero), kd.get("neg", zero)
    loss = cfg.dpo_weight * dpo_term + cfg.pos_weight * pos_term + cfg.neg_weight * neg_term
    return DPDLossOutput(loss, dpo_term, pos_term, neg_term, {"loss": loss.detach(), **stats})


class DPDLoss(nn.Module):
    """`dpd_loss` with a fixed DPDLossConfig (default: the "dpd" preset)."""

    def __init__(self, config: DPDLossConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DPDLossConfig.preset("dpd")

    def forward(self, logits: torch.Tensor, batch: DPDBatch) -> DPDLossOutput:
        return dpd_loss(logits, batch, self.config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
