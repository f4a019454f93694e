"""Per-query measurements of one student on the held-out set (one value, or numerator and denominator,
per query: bootstrap.py turns them into intervals).

    answers(model, prompts)            greedy answers and k samples per query      -> verifier accuracy, pass@k
    sample_kl(model, samples, rows)    forward KL(teacher || student) per token, summed per sequence, on
                                       held-out teacher samples (chosen) AND held-out SFT-student samples
                                       (rejected: a fixed sample of the students' region, the same for every run)
    own_sample_kl(model, prompts, samples, rows)   the same KL on the measured model's OWN fresh samples
                                       (its on-policy region, which L_neg aims at; it moves with the model)
    pair_scores(model, pairs, rows)    per pair: log p(chosen) > log p(rejected), and the DPO reward margin
                                       beta * ((log p(c) - log ref(c)) - (log p(r) - log ref(r)))
    teacher_logprob(score, prompts, answers)   sum and count of the teacher's token log-probs of the
                                       student's fresh greedy answers (a teacher-judged quality score)

KL is computed on the teacher's top-k + tail buckets (exact when k = vocab), as the training loss sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualdistill.teacher_logits import TeacherLogits
from dualdistill.trainer.data import PairExample, collate
from dualdistill.trainer.teacher import FetchedTeacher


@dataclass
class Answers:
    greedy_ids: list[list[int]]  # per query, generated ids up to and including the first EOS
    greedy_text: list[str]
    sample_text: list[list[str]]  # per query, k samples
    sample_ids: list[list[list[int]]]  # per query, k samples' generated ids (up to and including the first EOS)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _cut(row: list[int], eos_id: int | None) -> list[int]:
    """Generated ids up to and including the first EOS (the padding after it dropped)."""
    if eos_id is not None and eos_id in row:
        return row[: row.index(eos_id) + 1]
    return row


@torch.no_grad()
def answers(
    model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, samples: int, temperature: float,
    seed: int, batch_size: int = 32, pad_id: int = 0,
) -> Answers:  # fmt: skip
    """Greedy answers and `samples` temperature samples (no top-k / top-p truncation) per prompt."""
    model.eval()
    eos = tokenizer.eos_token_id
    greedy_ids: list[list[int]] = []
    sample_text: list[list[str]] = []
    sample_ids: list[list[list[int]]] = []
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": eos}
    for begin in range(0, len(prompts), batch_size):
        ids, mask = (t.to(model.device) for t in _left_pad(prompts[begin : begin + batch_size], pad_id))
        width = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **common)
        greedy_ids += [_cut(row[width:], eos) for row in out.tolist()]
        if samples:
            torch.manual_seed(seed + begin)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, num_return_sequences=samples, **common)  # fmt: skip
            cut = [_cut(r[width:], eos) for r in out.tolist()]
            sample_ids += [cut[i : i + samples] for i in range(0, len(cut), samples)]
            rows = [tokenizer.decode(r, skip_special_tokens=True) for r in cut]
            sample_text += [rows[i : i + samples] for i in range(0, len(rows), samples)]
    text = [tokenizer.decode(g, skip_special_tokens=True) for g in greedy_ids]
    if not samples:
        sample_text, sample_ids = [[] for _ in prompts], [[] for _ in prompts]
    return Answers(greedy_ids, text, sample_text, sample_ids)


def _per_row_kl(logits: torch.Tensor, teacher: TeacherLogits, mask: torch.Tensor) -> tuple[list[float], list[int]]:
    from dualdistill.losses import sparse_kd_loss

    sums, counts = [], []
    for i in range(logits.shape[0]):
        keep = teacher.mask[i : i + 1] & mask[i : i + 1]
        n = int(keep.sum())
        value = sparse_kd_loss(logits[i : i + 1], teacher[i : i + 1], "forward_kl", mask=mask[i : i + 1]) if n else 0.0
        sums.append(float(value) * n)
        counts.append(n)
    return sums, counts


@torch.no_grad()
def sample_kl(
    model, examples: Sequence[PairExample], fetch: Callable[[Sequence[PairExample]], FetchedTeacher], *,
    batch_size: int = 16, pad_id: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per example: KL summed over the chosen (teacher sample) and rejected (student sample) response tokens,
    and the token counts: {"kl_teacher_sum", "kl_teacher_tokens", "kl_student_sum", "kl_student_tokens"}."""
    model.eval()
    out: dict[str, list] = {k: [] for k in ("kl_teacher_sum", "kl_teacher_tokens", "kl_student_sum", "kl_student_tokens")}
    for begin in range(0, len(examples), batch_size):
        part = list(examples[begin : begin + batch_size])
        batch, fetched, b, device = collate(part, pad_id), fetch(part), len(part), model.device
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        teacher = TeacherLogits.from_results(fetched.chosen + fetched.rejected, batch.starts, batch.seq_len).to(device)
        for side, rows in (("teacher", slice(0, b)), ("student", slice(b, 2 * b))):
            sums, counts = _per_row_kl(logits[rows].float(), teacher[rows], batch.loss_mask[rows].to(device))
            out[f"kl_{side}_sum"] += sums
            out[f"kl_{side}_tokens"] += counts
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def own_sample_kl(
    model, prompts: Sequence[Sequence[int]], samples: Sequence[Sequence[Sequence[int]]],
    fetch: Callable[[Sequence[PairExample]], FetchedTeacher], *, batch_size: int = 16, pad_id: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per query: forward KL(teacher || model) summed over the tokens of the model's own samples of that
    query (its first two, or its only one) and their count: {"kl_own_sum", "kl_own_tokens"}.

    samples[q] are the model's fresh samples' generated ids (`Answers.sample_ids`); `fetch` returns the
    teacher's rows for pairs (e.g. `LiveTeacher.fetch`): each query's two samples travel as one pair's
    chosen and rejected sides, so both are scored in one call. A query without samples counts 0 tokens."""
    sums, counts = np.zeros(len(prompts)), np.zeros(len(prompts))
    index = [q for q, s in enumerate(samples) if len(s) > 0 and all(len(x) > 0 for x in s[:2])]
    pairs = [PairExample(id=f"own-{q}", prompt_ids=tuple(prompts[q]), chosen_ids=tuple(samples[q][0]),
                         rejected_ids=tuple(samples[q][min(1, len(samples[q]) - 1)])) for q in index]  # fmt: skip
    if pairs:
        kl = sample_kl(model, pairs, fetch, batch_size=batch_size, pad_id=pad_id)
        two = np.array([len(samples[q]) > 1 for q in index])  # one sample: its row was scored twice, count once
        sums[index] = kl["kl_teacher_sum"] + np.where(two, kl["kl_student_sum"], 0.0)
        counts[index] = kl["kl_teacher_tokens"] + np.where(two, kl["kl_student_tokens"], 0.0)
    return {"kl_own_sum": sums, "kl_own_tokens": counts}


@torch.no_grad()
def pair_scores(
    model, pairs: Sequence[PairExample], fetch: Callable[[Sequence[PairExample]], FetchedTeacher], *, beta: float,
    batch_size: int = 16, pad_id: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per pair: "pref_correct" (1 when log p(chosen) > log p(rejected), summed response log-probs) and
    "reward_margin" (needs the fetched reference scores)."""
    from dualdistill.losses import sequence_logps

    model.eval()
    correct, margins = [], []
    for begin in range(0, len(pairs), batch_size):
        part = list(pairs[begin : begin + batch_size])
        batch, fetched, b, device = collate(part, pad_id), fetch(part), len(part), model.device
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        logps = sequence_logps(logits, batch.labels.to(device), batch.loss_mask.to(device), False).double().cpu()
        if fetched.ref_chosen is None or fetched.ref_rejected is None:
            raise ValueError("pair_scores needs the reference scores of the held-out pairs (capture with a reference)")
        ref_c, ref_r = torch.from_numpy(fetched.ref_chosen).double(), torch.from_numpy(fetched.ref_rejected).double()
        correct += (logps[:b] > logps[b:]).double().tolist()
        margins += (beta * ((logps[:b] - ref_c) - (logps[b:] - ref_r))).tolist()
    return {"pref_correct": np.asarray(correct), "reward_margin": np.asarray(margins)}


def teacher_logprob(
    score: Callable[[list[list[int]], list[int]], list[np.ndarray]], prompts: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]], batch_size: int = 32,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per query: the teacher's summed token log-probs of the answer and its token count.

    score(sequences, starts) -> per sequence the teacher's log-probs of tokens [start, len) (e.g. the
    `token_logprobs` of `TeacherClient.logits`). An empty answer counts 0 tokens (and adds nothing)."""
    sums = np.zeros(len(prompts))
    counts = np.zeros(len(prompts))
    todo = [i for i, a in enumerate(answer_ids) if len(a) > 0]
    for begin in range(0, len(todo), batch_size):
        index = todo[begin : begin + batch_size]
        sequences = [list(prompts[i]) + list(answer_ids[i]) for i in index]
        starts = [len(prompts[i]) for i in index]
        for i, logprobs in zip(index, score(sequences, starts), strict=True):
            sums[i] = float(np.sum(logprobs, dtype=np.float64))
            counts[i] = len(logprobs)
    return {"teacher_logprob_sum": sums, "teacher_logprob_tokens": counts}
