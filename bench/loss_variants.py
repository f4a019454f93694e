"""The loss variants `loss_memory.py` compares, with their inputs. Each variant: inputs -> scalar loss.

    sparse_kd        dualdistill sparse_kd_loss, forward KL on k-entry teacher rows + tail (k = 128)
    full_kd          plain full-vocabulary forward KL on materialised teacher logits (B, L, V), written in
                     the style of torchtune's ForwardKLLoss: softmax(teacher) * log_softmax(student)
    full_kd_chunked  the same, summed over 8 sequence chunks (torchtune's ForwardKLWithChunkedOutputLoss)
    dpd              dualdistill dpd_loss, preset "dpd": DPO + forward KL on chosen AND rejected (sparse)
    full_dpd         the same objective in plain full-vocabulary form: sequence log-probs from a full
                     log_softmax, sigmoid DPO, full_kd on both sides with both teachers materialised

From the last hidden states (2B, L, H) and an LM head (V, H) instead of logits (`--fused` in
loss_memory.py; the logits, when a variant builds them, count in its peak):
    fused_dpd        dualdistill fused_dpd_loss, preset "dpd": chunked, never the (2B, L, V) logits
    dpd_head         dpd_loss on F.linear(hidden, head): the unfused path the trainer takes without fused_loss
    full_dpd_head    full_dpd on F.linear(hidden, head): the full-vocabulary objective from the same inputs

Only the teacher side differs between a sparse variant and its full counterpart; the student logits
(and, for the DPD pair, ids, masks and reference log-probs) are the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dualdistill.losses import DPDBatch, DPDLossConfig, dpd_loss, fused_dpd_loss, shift_labels, sparse_kd_loss
from dualdistill.teacher_logits import TeacherLogits

VARIANTS = (
    "sparse_kd",
    "full_kd",
    "full_kd_chunked",
    "dpd",
    "full_dpd",
    "fused_dpd",
    "dpd_head",
    "full_dpd_head",
)
PAIRED = {"dpd", "full_dpd"}  # variants that take a (chosen, rejected) pair of logits
HEAD = {"fused_dpd", "dpd_head", "full_dpd_head"}  # variants from hidden states + LM head
STACKED = {
    "dpd",
    "fused_dpd",
    "dpd_head",
}  # paired variants that take the pair stacked on the batch dim (one leaf, one teacher)
SPARSE = {"sparse_kd", "dpd", "fused_dpd", "dpd_head"}
DPO_BETA = 0.1


@dataclass
class StudentSide:
    """Student inputs: logits (B, L, V) leaf with grad, ids (B, L), response mask (B, L), ref logps (B,)."""

    logits: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    ref_logps: torch.Tensor


def make_student(b: int, length: int, vocab: int, device: str, dtype: torch.dtype, seed: int) -> StudentSide:
    g = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(b, length, vocab, generator=g, device=device, dtype=torch.float32) * 2.0).to(dtype)
    ids = torch.randint(0, vocab, (b, length), generator=g, device=device)
    mask = torch.ones(b, length, dtype=torch.bool, device=device)
    mask[:, : length // 8] = False  # a prompt prefix without teacher rows / DPO credit
    ref = -torch.rand(b, generator=g, device=device) * length
    return StudentSide(logits.requires_grad_(True), ids, mask, ref)


def make_sparse_teacher(
    b: int, length: int, vocab: int, k: int, device: str, seed: int, chunk: int = 256
) -> TeacherLogits:
    """Top-k rows + tail of random teacher logits, built `chunk` rows at a time (no (B, L, V) tensor)."""
    g = torch.Generator(device=device).manual_seed(seed + 1)
    ids = torch.empty(b, length, k, dtype=torch.int64, device=device)
    logprobs = torch.empty(b, length, k, dtype=torch.float32, device=device)
    tail = torch.empty(b, length, dtype=torch.float32, device=device)
    for i in range(b):
        for s in range(0, length, chunk):
            e = min(length, s + chunk)
            lp = torch.log_softmax(torch.randn(e - s, vocab, generator=g, device=device) * 2.0, -1)
            top, top_ids = lp.topk(k, -1)
            ids[i, s:e], logprobs[i, s:e] = top_ids, top
            tail[i, s:e] = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-7))
    mask = torch.ones(b, length, dtype=torch.bool, device=device)
    mask[:, : length // 8] = False
    mask[:, -1] = False
    return TeacherLogits(ids, logprobs, logprobs[..., 0].clone(), tail, mask)


def clone_teacher(t: TeacherLogits) -> TeacherLogits:
    return TeacherLogits(
        t.ids.clone(), t.logprobs.clone(), t.token_logprobs.clone(), t.tail.clone(), t.mask.clone()
    )


def make_full_teacher(
    b: int, length: int, vocab: int, device: str, dtype: torch.dtype, seed: int
) -> torch.Tensor:
    """Materialised teacher logits (B, L, V), as an in-process teacher forward would hand them over."""
    g = torch.Generator(device=device).manual_seed(seed + 1)
    return (torch.randn(b, length, vocab, generator=g, device=device, dtype=torch.float32) * 2.0).to(dtype)


# ------------------------------------------------------------------------------------------- full-vocab
def full_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over masked positions of -sum_v softmax(t)_v log_softmax(s)_v (forward KL up to a constant).

    Shapes: logits (B, L, V), mask (B, L). The torchtune formulation: teacher softmax and student
    log_softmax in float32, their product summed over the vocabulary; autograd keeps the (B, L, V)
    intermediates for backward.
    """
    teacher_prob = F.softmax(teacher_logits, dim=-1, dtype=torch.float32)
    student_logprob = F.log_softmax(student_logits, dim=-1, dtype=torch.float32)
    inf_mask = torch.isinf(student_logits)
    per_token = torch.masked_fill(teacher_prob * student_logprob, inf_mask, 0).sum(-1)  # (B, L)
    m = mask.to(per_token.dtype)
    return -(per_token * m).sum() / m.sum().clamp(min=1)


def full_forward_kl_chunked(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, chunks: int = 8
) -> torch.Tensor:
    """`full_forward_kl` summed over `chunks` sequence chunks (per-chunk float32 upcast), same value."""
    total = student_logits.new_zeros((), dtype=torch.float32)
    for s, t, m in zip(
        student_logits.chunk(chunks, 1), teacher_logits.chunk(chunks, 1), mask.chunk(chunks, 1), strict=True
    ):
        tp = F.softmax(t, dim=-1, dtype=torch.float32)
        lp = F.log_softmax(s, dim=-1, dtype=torch.float32)
        per_token = torch.masked_fill(tp * lp, torch.isinf(s), 0).sum(-1)
        total = total + (per_token * m.to(per_token.dtype)).sum()
    return -total / mask.sum().clamp(min=1)


def full_sequence_logps(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sum of log_softmax(logits[:, j])[ids[:, j + 1]] over response labels, one full log_softmax."""
    lp = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask[:, 1:].to(lp.dtype)).sum(-1)


def full_dpd(chosen: StudentSide, rejected: StudentSide, t_chosen: torch.Tensor, t_rejected: torch.Tensor):
    """Sigmoid DPO (beta 0.1) + full forward KL on chosen and rejected, weights 1 / 1 / 1."""
    pc = full_sequence_logps(chosen.logits, chosen.ids, chosen.mask)
    pr = full_sequence_logps(rejected.logits, rejected.ids, rejected.mask)
    z = DPO_BETA * ((pc - chosen.ref_logps) - (pr - rejected.ref_logps))
    dpo = -F.logsigmoid(z).mean()
    return (
        dpo
        + full_forward_kl(chosen.logits, t_chosen, chosen.mask)
        + full_forward_kl(rejected.logits, t_rejected, rejected.mask)
    )


# ------------------------------------------------------------------------------------------------ driver
@dataclass
class HeadSide:
    """Head-variant inputs: hidden (2B, L, H) leaf, LM head weight (V, H) leaf, ids / mask (2B, L), ref (2B,)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    ref_logps: torch.Tensor


def make_head_side(
    b: int, length: int, vocab: int, hidden: int, device: str, dtype: torch.dtype, seed: int
) -> HeadSide:
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(2 * b, length, hidden, generator=g, device=device).to(dtype).requires_grad_(True)
    w = (
        (torch.randn(vocab, hidden, generator=g, device=device) * (2.0 / hidden**0.5))
        .to(dtype)
        .requires_grad_(True)
    )
    ids = torch.randint(0, vocab, (2 * b, length), generator=g, device=device)
    mask = torch.ones(2 * b, length, dtype=torch.bool, device=device)
    mask[:, : length // 8] = False
    ref = -torch.rand(2 * b, generator=g, device=device) * length
    return HeadSide(h, w, ids, mask, ref)


def head_loss(variant: str, side: HeadSide, teachers: list):
    config = DPDLossConfig.preset("dpd", chunk_size=512)
    b = side.ids.shape[0] // 2
    if variant == "full_dpd_head":
        logits = F.linear(side.hidden, side.weight)
        halves = [
            StudentSide(logits[s], side.ids[s], side.mask[s], side.ref_logps[s])
            for s in (slice(0, b), slice(b, None))
        ]
        return full_dpd(halves[0], halves[1], teachers[0], teachers[1])
    batch = DPDBatch(*shift_labels(side.ids, side.mask), teachers[0], side.ref_logps)
    if variant == "fused_dpd":
        return fused_dpd_loss(side.hidden, side.weight, None, batch, config).loss
    return dpd_loss(F.linear(side.hidden, side.weight), batch, config).loss


def loss_fn(variant: str, students: list[StudentSide], teachers: list):
    """The scalar loss of `variant` on prepared inputs (teachers: TeacherLogits or (B, L, V) tensors)."""
    if variant in HEAD:
        return head_loss(variant, students[0], teachers)
    if variant == "sparse_kd":
        return sparse_kd_loss(students[0].logits, teachers[0], "forward_kl", chunk_size=512)
    if variant == "full_kd":
        return full_forward_kl(students[0].logits, teachers[0], _rows(teachers[0]))
    if variant == "full_kd_chunked":
        return full_forward_kl_chunked(students[0].logits, teachers[0], _rows(teachers[0]))
    if variant == "dpd":
        (pair,) = students  # stack_students: [chosen; rejected]
        batch = DPDBatch(*shift_labels(pair.ids, pair.mask), teachers[0], pair.ref_logps)
        return dpd_loss(pair.logits, batch, DPDLossConfig.preset("dpd", chunk_size=512)).loss
    if variant == "full_dpd":
        return full_dpd(students[0], students[1], teachers[0], teachers[1])
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


def stack_students(sides: list[StudentSide]) -> StudentSide:
    """[chosen; rejected] as one (2B, L, V) leaf (the same values), as `dpd_loss` takes a pair batch."""
    logits = torch.cat([side.logits.detach() for side in sides]).requires_grad_(True)
    return StudentSide(
        logits,
        torch.cat([s.ids for s in sides]),
        torch.cat([s.mask for s in sides]),
        torch.cat([s.ref_logps for s in sides]),
    )


def _rows(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The rows the sparse teacher has (the same prompt prefix and last position left out)."""
    b, length, _ = teacher_logits.shape
    mask = torch.ones(b, length, dtype=torch.bool, device=teacher_logits.device)
    mask[:, : length // 8] = False
    mask[:, -1] = False
    return mask
