"""Held-out evaluation of the student.

Metrics over the eval pairs (each a mean over pairs, or over response tokens where it says so):
    eval/kl_pos         forward KL(teacher || student) on the positives' response tokens, on the teacher's
                        top-k + tail buckets (`sparse_kd_loss`, divergence forward_kl), token-weighted mean
    eval/pref_acc       fraction of pairs with log pi(chosen) > log pi(rejected) (summed response log-probs)
    eval/reward_margin  beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))), the DPO reward margin
    eval/logp_chosen, eval/logp_rejected   mean summed response log-probs under the student
    eval/verifier_acc   mean verifier score of the student's greedy answer to each eval prompt, when a
                        verifier applies (`verifier: auto` uses the arithmetic task for pairs with an answer)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dualdistill.teacher_logits import TeacherLogits
from dualdistill.trainer.data import PairExample, collate
from dualdistill.trainer.reference import Reference

AUTO_VERIFIER = "dualdistill.tasks.arithmetic:verify"


@dataclass(frozen=True)
class Verifier:
    """score(query record, response text) -> float in [0, 1]; `needs_answer`: only queries with an 'answer'."""

    score: Callable[[dict, str], float]
    needs_answer: bool


def load_verifier(spec: str, examples: Sequence[PairExample]) -> Verifier | None:
    """`auto`: the arithmetic verifier when eval pairs carry an 'answer'; `none`; or MODULE:FUNCTION."""
    if spec == "none":
        return None
    needs_answer = spec == "auto"
    if spec == "auto":
        if not any("answer" in e.record for e in examples):
            return None
        spec = AUTO_VERIFIER
    module_name, _, function = spec.partition(":")
    try:
        return Verifier(getattr(importlib.import_module(module_name), function), needs_answer)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"verifier {spec!r} cannot be loaded ({exc}); give MODULE:FUNCTION") from None


@torch.no_grad()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PairExample],
    device: torch.device,
    max_new_tokens: int,
    pad_id: int,
) -> list[str]:
    """The student's greedy continuation of each prompt (left-padded batch), decoded without specials."""
    prompts = [list(e.prompt_ids) for e in examples]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in output.tolist()]


@torch.no_grad()
def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PairExample],
    fetch: Callable[[Sequence[PairExample]], Any],
    reference: Reference | None,
    *,
    beta: float,
    length_normalize: bool,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    verifier: Verifier | None,
    max_new_tokens: int,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """The metrics of the module docstring on `examples` (model left in eval mode; caller restores)."""
    from dualdistill.losses import sequence_logps, sparse_kd_loss

    model.eval()
    kl_sum, kl_tokens, n = 0.0, 0, 0
    sums = {"pref_acc": 0.0, "logp_chosen": 0.0, "logp_rejected": 0.0}
    verified, scored = 0.0, 0
    for begin in range(0, len(examples), batch_size):
        part = list(examples[begin : begin + batch_size])
        batch = collate(part, pad_id)
        fetched = fetch(part)
        b = len(part)
        input_ids = batch.input_ids.to(device)
        labels, loss_mask = batch.labels.to(device), batch.loss_mask.to(device)  # aligned with the logit rows
        with autocast():
            logits = model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device)).logits
        teacher = TeacherLogits.from_results(fetched.chosen, batch.starts[:b], batch.seq_len).to(device)
        tokens = int((teacher.mask & loss_mask[:b]).sum())
        kl = sparse_kd_loss(logits[:b], teacher, "forward_kl", mask=loss_mask[:b])
        kl_sum += float(kl) * tokens
        kl_tokens += tokens
        logps = sequence_logps(logits, labels, loss_mask, length_normalize).float()
        chosen, rejected = logps[:b], logps[b:]
        sums["pref_acc"] += float((chosen > rejected).float().sum())
        if reference is not None:  # a loss without a DPO term has no reference, hence no reward
            ref = reference.scores(batch, fetched)
            margin = beta * ((chosen - ref[:b]) - (rejected - ref[b:]))
            sums["reward_margin"] = sums.get("reward_margin", 0.0) + float(margin.sum())
        sums["logp_chosen"] += float(chosen.sum())
        sums["logp_rejected"] += float(rejected.sum())
        n += b
        if verifier is not None:
            answerable = [e for e in part if "answer" in e.record] if verifier.needs_answer else part
            if answerable:
                answers = greedy_answers(model, tokenizer, answerable, device, max_new_tokens, pad_id)
                for example, answer in zip(answerable, answers, strict=True):
                    verified += float(verifier.score(example.record, answer))
                    scored += 1
    metrics = {f"eval/{k}": v / max(n, 1) for k, v in sums.items()}
    metrics["eval/kl_pos"] = kl_sum / max(kl_tokens, 1)
    metrics["eval/pairs"] = float(n)
    if scored:
        metrics["eval/verifier_acc"] = verified / scored
        metrics["eval/verified"] = float(scored)
    return metrics
