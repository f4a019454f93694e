"""Supervised fine-tuning (SFT) of a student on (prompt, response) examples: the DPO reference of a DPD run.

    loss = - sum_{b, t in response_b} log p_theta(x_b[t] | x_b[:t]) / (number of response tokens in the batch)

Plain next-token cross-entropy on the response tokens only (the prompt is context, not a target), AdamW,
linear warmup then cosine decay (`trainer.optim.lr_factor`), global gradient-norm clipping. Step s uses
examples s*B .. s*B+B-1 of an endless stream of per-epoch permutations that are a pure function of
(seed, epoch), and torch is seeded with `seed`, so the same call gives the same weights on the same
machine. The result is written atomically: into a hidden sibling directory, then renamed, so a crash never
leaves a half-written model where a cache would reuse it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualdistill.trainer.optim import lr_factor

MARKER = "sft.json"  # written last into the output: its presence means the directory is complete


@dataclass(frozen=True)
class SFTExample:
    """One training sequence: the prompt's token ids (context) and the response's (targets)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SFTExample:
        """From {"prompt_token_ids": [...], "token_ids": [...]} (a completion of `TeacherClient.generate`)."""
        return cls(tuple(int(t) for t in record["prompt_token_ids"]), tuple(int(t) for t in record["token_ids"]))


@dataclass
class SFTResult:
    model_dir: Path  # HF directory of the fine-tuned student (weights + tokenizer + sft.json)
    losses: list[float] = field(default_factory=list)  # mean response-token cross-entropy per step
    wall_seconds: float = 0.0


def response_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens.

    logits (B, L, V) from the model on input_ids (B, L); response_mask (B, L) bool marks target tokens by
    their position in input_ids (position t is predicted by logits[:, t - 1]; position 0 is never a target).
    Returns a scalar float32; 0 (not NaN) when the mask is empty.
    """
    targets = input_ids[:, 1:]  # (B, L-1)
    mask = response_mask[:, 1:]  # (B, L-1)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V)
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    total = -(token_logprobs * mask).sum()
    return total / mask.sum().clamp_min(1)


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, response_mask), each (B, L)."""
    sequences = [e.prompt_ids + e.response_ids for e in examples]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    response = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, (example, sequence) in enumerate(zip(examples, sequences, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention[row, : len(sequence)] = 1
        response[row, len(example.prompt_ids) : len(sequence)] = True
    return input_ids, attention, response


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> Iterable[list[int]]:
    """Indices of each step's batch: consecutive slices of per-epoch permutations of (seed, epoch)."""
    epoch, order, position = 0, np.random.default_rng([seed, 0]).permutation(num_examples), 0
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < batch_size:
            if position == num_examples:
                epoch, position = epoch + 1, 0
                order = np.random.default_rng([seed, epoch]).permutation(num_examples)
            take = min(batch_size - len(batch), num_examples - position)
            batch.extend(order[position : position + take].tolist())
            position += take
        yield batch


def _check(examples: Sequence[SFTExample], steps: int, lr: float, batch_size: int, warmup_steps: int) -> None:
    if not examples:
        raise ValueError("sft needs at least one example")
    for index, example in enumerate(examples):
        if not example.prompt_ids or not example.response_ids:
            raise ValueError(f"examples[{index}] needs a non-empty prompt and response (the prompt's last token "
                             "predicts the first response token)")
    if steps < 1 or batch_size < 1 or warmup_steps < 0:
        raise ValueError(f"steps and batch_size must be >= 1 and warmup_steps >= 0 (got {steps}, {batch_size}, "
                         f"{warmup_steps})")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")


def sft(
    student_dir: str | Path,
    examples: Sequence[SFTExample],
    out_dir: str | Path,
    *,
    steps: int,
    lr: float = 1e-4,
    seed: int = 0,
    batch_size: int = 8,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> SFTResult:
    """Fine-tune the HF causal LM in `student_dir` on `examples` for `steps` AdamW steps; save to `out_dir`.

    Each step: a batch of `batch_size` examples (see `batch_indices`), `response_cross_entropy`, backward,
    clip to `max_grad_norm` (0: off), AdamW with lr * lr_factor(step, warmup_steps, steps, 0). The output
    directory gets the model, the tokenizer and `sft.json` (settings and per-step losses). An existing
    `out_dir` is replaced. on_step(step, loss) is called after each step.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check(examples, steps, lr, batch_size, warmup_steps)
    began = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, steps, 0.0))
    bar = _progress_bar(progress, steps)
    losses: list[float] = []
    try:
        for step, indices in enumerate(batch_indices(len(examples), batch_size, steps, seed), start=1):
            input_ids, attention, response = collate_sft([examples[i] for i in indices], pad_id)
            logits = model(input_ids=input_ids, attention_mask=attention).logits  # (B, L, V)
            loss = response_cross_entropy(logits, input_ids, response)
            loss.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        if bar is not None:
            bar.close()
    facts = {
        "source": str(Path(student_dir).resolve()),
        "examples": len(examples),
        "settings": {"steps": steps, "lr": lr, "seed": seed, "batch_size": batch_size, "warmup_steps": warmup_steps,
                     "weight_decay": weight_decay, "max_grad_norm": max_grad_norm},  # fmt: skip
        "losses": losses,
        "wall_seconds": time.perf_counter() - began,
    }
    model_dir = _save_atomically(model, tokenizer, Path(out_dir), facts)
    return SFTResult(model_dir=model_dir, losses=losses, wall_seconds=facts["wall_seconds"])


def is_complete(directory: str | Path) -> bool:
    """True when `directory` holds a finished SFT output (its marker file exists)."""
    return (Path(directory) / MARKER).is_file()


def _save_atomically(model: Any, tokenizer: Any, out_dir: Path, facts: dict) -> Path:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True)


__all__ = ["SFTExample", "SFTResult", "collate_sft", "is_complete", "response_cross_entropy", "sft"]
