"""Plain reference implementations written straight from the formulas (float64, no chunking, no tricks).

They share no code with dualdistill.losses: probabilities instead of log-probabilities, dense
vocabulary tensors, explicit sums over the complement.
"""

from __future__ import annotations

import torch

from dualdistill.teacher_logits import TeacherLogits


def ids_indicator(ids: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """(..., V) bool: True at each row's valid ids. Padding goes to an extra column V, then dropped."""
    target = torch.where(valid, ids, vocab)
    hits = torch.zeros(*ids.shape[:-1], vocab + 1, dtype=torch.bool)
    return hits.scatter(-1, target, True)[..., :vocab]


def kl_probs(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """sum p * log(p / r) over the last dim, 0 where p = 0."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, r)).sum(-1)


def divergence_probs(name: str, p: torch.Tensor, q: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The divergences of docs/losses.md on probability vectors (..., K) -> (...)."""
    if name == "forward_kl" or (name == "jsd" and beta == 0.0):
        return kl_probs(p, q)
    if name == "reverse_kl" or (name == "jsd" and beta == 1.0):
        return kl_probs(q, p)
    if name == "skew_forward_kl":
        return kl_probs(p, alpha * p + (1 - alpha) * q)
    if name == "skew_reverse_kl":  # DistiLLM-2: the student inside the mixture carries no gradient
        return kl_probs(q, (1 - alpha) * p + alpha * q.detach())
    if name == "skew_reverse_kl_full":
        return kl_probs(q, (1 - alpha) * p + alpha * q)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl_probs(p, m) + (1 - beta) * kl_probs(q, m)
    raise AssertionError(name)


def dense_teacher_probs(teacher: TeacherLogits, vocab: int) -> torch.Tensor:
    """(B, L, V) float64 teacher probabilities for a teacher whose rows cover the whole vocabulary."""
    probs = torch.zeros(*teacher.ids.shape[:2], vocab, dtype=torch.float64)
    return probs.scatter_add(-1, teacher.ids, teacher.logprobs.double().exp())


def coarse_kd_reference(
    student_logits: torch.Tensor,
    teacher: TeacherLogits,
    divergence: str,
    temperature: float = 1.0,
    alpha: float = 0.1,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "token",
) -> torch.Tensor:
    """Mean over valid rows of D(p_coarse, q_coarse) on the k ids + a tail bucket, in float64.

    reduction "sequence": the mean over each sequence's valid rows, then over the sequences having any.

    The student tail is the explicit sum of softmax probabilities over the ids NOT in the row.
    """
    q = torch.softmax(student_logits.double() / temperature, dim=-1)  # (B, L, V)
    valid = teacher.logprobs > float("-inf")  # (B, L, k)
    in_row = ids_indicator(teacher.ids, valid, q.shape[-1])
    q_ids = torch.where(valid, q.gather(-1, teacher.ids), 0.0)
    q_tail = torch.where(in_row, 0.0, q).sum(-1, keepdim=True)
    p_ids = torch.where(valid, teacher.logprobs.double().exp(), 0.0)
    p_tail = teacher.tail.double().exp()[..., None]
    per_row = divergence_probs(
        divergence, torch.cat([p_ids, p_tail], -1), torch.cat([q_ids, q_tail], -1), alpha, beta
    )
    keep = teacher.mask if mask is None else teacher.mask & mask
    if reduction == "sequence":
        means = [per_row[i][keep[i]].mean() for i in range(keep.shape[0]) if keep[i].any()]
        return torch.stack(means).mean() if means else per_row.sum() * 0
    return torch.where(keep, per_row, 0.0).sum() / keep.sum().clamp(min=1)


def sampled_kd_reference(student_logits: torch.Tensor, teacher: TeacherLogits) -> torch.Tensor:
    """Mean over valid rows of sum_j (c_j / N) (log p_j - log q_j), float64."""
    log_q = torch.log_softmax(student_logits.double(), dim=-1).gather(-1, teacher.ids)
    weights = teacher.counts.double() / teacher.samples
    terms = torch.where(teacher.counts > 0, weights * (teacher.logprobs.double() - log_q), 0.0)
    per_row = terms.sum(-1)
    return torch.where(teacher.mask, per_row, 0.0).sum() / teacher.mask.sum().clamp(min=1)


def dpo_reference(
    pi_c: torch.Tensor,
    pi_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    beta: float,
    margin: float,
    loss_type: str,
    label_smoothing: float,
) -> torch.Tensor:
    """The DPO-family formulas of the paper(s), elementwise then mean, in float64."""
    h = (pi_c.double() - ref_c.double()) - (pi_r.double() - ref_r.double())
    if loss_type == "sigmoid":
        z = beta * h - margin
        sig = 1 / (1 + torch.exp(-z))
        losses = -(1 - label_smoothing) * torch.log(sig) - label_smoothing * torch.log(1 - sig)
    elif loss_type == "ipo":
        losses = (h - (1 + 2 * margin) / (2 * beta)) ** 2
    else:
        losses = torch.clamp(1 - beta * h + margin, min=0)
    return losses.mean()


def sequence_logps_reference(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over j >= 1 with mask[b, j] of log softmax(logits[b, j - 1])[labels[b, j]], by explicit loops."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    out = []
    for b in range(logits.shape[0]):
        total = torch.zeros((), dtype=torch.float64)
        for j in range(1, logits.shape[1]):
            if mask[b, j]:
                total = total + log_probs[b, j - 1, labels[b, j]]
        out.append(total)
    return torch.stack(out)


def make_teacher(
    teacher_logits: torch.Tensor,
    k: int,
    mask: torch.Tensor | None = None,
    ragged: bool = False,
    seed: int = 0,
) -> TeacherLogits:
    """A top-k TeacherLogits from dense teacher logits (B, L, V): ids sorted by probability, exact tail.

    `ragged`: some rows keep fewer than k entries (padding: id 0, logprob -inf), like a narrower row.
    """
    b, length, vocab = teacher_logits.shape
    log_p = torch.log_softmax(teacher_logits.double(), dim=-1)
    values, ids = log_p.sort(dim=-1, descending=True)
    values, ids = values[..., :k].clone(), ids[..., :k].clone()
    if ragged:
        generator = torch.Generator().manual_seed(seed)
        widths = torch.randint(1, k + 1, (b, length), generator=generator)
        pad = torch.arange(k)[None, None, :] >= widths[..., None]
        values = values.masked_fill(pad, float("-inf"))
        ids = ids.masked_fill(pad, 0)
    kept = ids_indicator(ids, values > float("-inf"), vocab)
    outside = torch.where(kept, 0.0, log_p.exp()).sum(-1)
    tail = torch.where(outside > 0, outside.log(), float("-inf"))
    token_logprobs = torch.zeros(b, length)
    return TeacherLogits(
        ids=ids,
        logprobs=values.float(),
        token_logprobs=token_logprobs,
        tail=tail.float(),
        mask=torch.ones(b, length, dtype=torch.bool) if mask is None else mask,
    )


def make_sampled_teacher(
    teacher_logits: torch.Tensor, samples: int, generator: torch.Generator
) -> TeacherLogits:
    """A "sample"-mode TeacherLogits: per row, `samples` draws from p, unique ids with their counts."""
    b, length, vocab = teacher_logits.shape
    log_p = torch.log_softmax(teacher_logits.double(), dim=-1)
    draws = torch.multinomial(log_p.exp().reshape(-1, vocab), samples, replacement=True, generator=generator)
    dense_counts = torch.zeros(b * length, vocab, dtype=torch.int64).scatter_add(
        -1, draws, torch.ones_like(draws)
    )
    k = int((dense_counts > 0).sum(-1).max())
    counts, ids = dense_counts.sort(dim=-1, descending=True)
    counts, ids = counts[:, :k], ids[:, :k]
    ids = torch.where(counts > 0, ids, 0)
    logprobs = torch.where(counts > 0, log_p.reshape(-1, vocab).gather(-1, ids), float("-inf"))
    shape = (b, length, k)
    return TeacherLogits(
        ids=ids.reshape(shape),
        logprobs=logprobs.reshape(shape).float(),
        token_logprobs=torch.zeros(b, length),
        tail=torch.zeros(b, length),
        mask=torch.ones(b, length, dtype=torch.bool),
        counts=counts.reshape(shape).int(),
        samples=samples,
    )
