"""Losses of Dual-level Preference Distillation, pure torch: pure functions plus thin nn.Modules.

    dpd_loss / DPDLoss (dpd.py)               w_dpo * DPO + w_pos * KD(pos) + w_neg * KD(neg) on a DPDBatch
                                              stacked [chosen; rejected], aligned by shift_labels (alignment.py)
    fused_dpd_loss (fused.py)                 the same from hidden states + LM head, chunked, no (2B, L, V) logits
    ├── sequence_logps (logprobs.py)          summed response log-probs, TRL-style selective_log_softmax
    ├── dpo_loss / DPOLoss (dpo.py)           sigmoid (cDPO smoothing) | ipo | hinge, with margin
    └── sparse_kd_loss / SparseKDLoss         (k + 1)-bucket KD against TeacherLogits, chunked over tokens
        (sparse_kd.py)                        with a recomputing autograd.Function
        └── divergence (divergences.py)       forward/reverse KL, skew KLs, generalised JSD, sampled KL

Conventions: reductions are means over valid tokens (an empty batch gives 0 with a zero gradient);
computation is in float32 (float64 inputs stay float64); bad configuration raises ValueError listing
the supported values. docs/losses.md has the formulas and the alignment diagram.
"""

from dualdistill.losses.alignment import IGNORE_INDEX, shift_labels
from dualdistill.losses.divergences import DIVERGENCES, divergence
from dualdistill.losses.dpd import PRESETS, DPDBatch, DPDLoss, DPDLossConfig, DPDLossOutput, dpd_loss
from dualdistill.losses.dpo import DPO_LOSS_TYPES, DPOLoss, dpo_loss
from dualdistill.losses.fused import fused_dpd_loss
from dualdistill.losses.logprobs import selective_log_softmax, sequence_logps
from dualdistill.losses.sparse_kd import SparseKDLoss, sparse_kd_loss

__all__ = [
    "DIVERGENCES",
    "DPO_LOSS_TYPES",
    "IGNORE_INDEX",
    "PRESETS",
    "DPDBatch",
    "DPDLoss",
    "DPDLossConfig",
    "DPDLossOutput",
    "DPOLoss",
    "SparseKDLoss",
    "divergence",
    "dpd_loss",
    "dpo_loss",
    "fused_dpd_loss",
    "selective_log_softmax",
    "sequence_logps",
    "shift_labels",
    "sparse_kd_loss",
]
