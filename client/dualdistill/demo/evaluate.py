"""The before/after metrics of the demo and the quality table, one definition for every model.

On the held-out set (queries the training never saw):
    verifier_acc  mean arithmetic-verifier score of the model's greedy answer (max_new_tokens tokens) to
                  EVERY held-out query, pairs or not, so that the pair filter cannot bias it
    kl_pos        forward KL(teacher || model) per response token of the held-out positives (chosen),
                  on the teacher's top-k + tail buckets (`trainer.evaluation.evaluate`); 0 for the teacher
                  by definition
    pref_acc      fraction of held-out pairs with log p(chosen) > log p(rejected) (summed response log-probs)
    logp_chosen / logp_rejected   their means

The teacher's rows of the held-out pairs are fetched once (`EvalSet.collect`) and reused for every model;
its greedy answers come from the service (temperature 0), and they also give the chat-templated prompt
token ids that the students answer from, so every model sees exactly the same prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualdistill.tasks.arithmetic import verify
from dualdistill.trainer.data import PairExample, load_pairs
from dualdistill.trainer.teacher import FetchedTeacher

METRICS = ("verifier_acc", "kl_pos", "pref_acc", "logp_chosen", "logp_rejected")
FETCH_CHUNK = 8  # pairs per teacher request


@dataclass
class EvalSet:
    """Held-out queries and pairs, with the teacher's rows and greedy answers (collected once)."""

    queries: list[dict]  # every held-out query ({"id", "prompt", "messages", "answer"})
    prompt_ids: list[list[int]]  # the chat-templated prompt of each query, as the service tokenized it
    pairs: list[PairExample]  # held-out pairs (the queries the pair filter kept)
    rows: FetchedTeacher  # teacher rows of `pairs`, in order: chosen[i], rejected[i]
    teacher_answers: list[str]  # the teacher's greedy answer to each query
    max_new_tokens: int

    @classmethod
    def collect(
        cls, fetch: Callable[[Sequence[PairExample]], FetchedTeacher], generate: Callable[..., list[Any]],
        queries: list[dict], pairs_path: Path | None, max_new_tokens: int,
    ) -> EvalSet:  # fmt: skip
        """fetch(pairs) -> FetchedTeacher (e.g. `LiveTeacher.fetch`); generate(prompts, **kw) -> completions
        of the teacher (`TeacherClient.generate` with the model bound)."""
        pairs = load_pairs(pairs_path, max_seq_len=1 << 20) if pairs_path is not None and _has_lines(pairs_path) else []
        chosen, rejected = [], []
        for begin in range(0, len(pairs), FETCH_CHUNK):
            fetched = fetch(pairs[begin : begin + FETCH_CHUNK])
            chosen.extend(fetched.chosen)
            rejected.extend(fetched.rejected)
        completions = generate([{"messages": q["messages"]} for q in queries], max_new_tokens=max_new_tokens,
                               temperature=0.0, n=1, seed=0)  # fmt: skip
        return cls(
            queries=queries,
            prompt_ids=[list(c.prompt_token_ids) for c in completions],
            pairs=pairs,
            rows=FetchedTeacher(chosen=chosen, rejected=rejected),
            teacher_answers=[c.text for c in completions],
            max_new_tokens=max_new_tokens,
        )

    def teacher_metrics(self) -> dict[str, float | None]:
        """The teacher's own row: greedy verifier accuracy, its preference accuracy from token_logprobs."""
        scores = [verify(q, a) for q, a in zip(self.queries, self.teacher_answers, strict=True)]
        chosen = np.array([np.sum(r.token_logprobs, dtype=np.float64) for r in self.rows.chosen])
        rejected = np.array([np.sum(r.token_logprobs, dtype=np.float64) for r in self.rows.rejected])
        has_pairs = len(self.pairs) > 0
        return {
            "verifier_acc": float(np.mean(scores)) if scores else None,
            "kl_pos": 0.0,  # KL(teacher || teacher): zero by definition
            "pref_acc": float(np.mean(chosen > rejected)) if has_pairs else None,
            "logp_chosen": float(chosen.mean()) if has_pairs else None,
            "logp_rejected": float(rejected.mean()) if has_pairs else None,
        }

    def _fetch(self, part: Sequence[PairExample]) -> FetchedTeacher:
        where = {e.id: i for i, e in enumerate(self.pairs)}
        index = [where[e.id] for e in part]
        return FetchedTeacher(chosen=[self.rows.chosen[i] for i in index],
                              rejected=[self.rows.rejected[i] for i in index])  # fmt: skip

    def model_metrics(self, model_dir: str | Path, batch_size: int = 16) -> dict[str, float | None]:
        """The metrics of the HF causal LM in `model_dir` (loaded here, float32, CPU)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        return self.metrics_of(model, tokenizer, batch_size)

    def metrics_of(self, model: Any, tokenizer: Any, batch_size: int = 16) -> dict[str, float | None]:
        from dualdistill.trainer.evaluation import evaluate, greedy_answers

        pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        device = torch.device("cpu")
        out: dict[str, float | None] = dict.fromkeys(METRICS)
        if self.pairs:
            found = evaluate(
                model, tokenizer, self.pairs, self._fetch, None, beta=0.1, length_normalize=False,
                batch_size=batch_size, device=device, pad_id=pad_id, verifier=None,
                max_new_tokens=self.max_new_tokens, autocast=contextlib.nullcontext,
            )  # fmt: skip
            for name in ("kl_pos", "pref_acc", "logp_chosen", "logp_rejected"):
                out[name] = found[f"eval/{name}"]
        prompts = [PairExample(id=q["id"], prompt_ids=tuple(p), chosen_ids=(), rejected_ids=())
                   for q, p in zip(self.queries, self.prompt_ids, strict=True)]  # fmt: skip
        answers: list[str] = []
        for begin in range(0, len(prompts), batch_size):
            answers += greedy_answers(model, tokenizer, prompts[begin : begin + batch_size], device,
                                      self.max_new_tokens, pad_id)  # fmt: skip
        scores = [verify(q, a) for q, a in zip(self.queries, answers, strict=True)]
        out["verifier_acc"] = float(np.mean(scores)) if scores else None
        return out


def _has_lines(path: Path) -> bool:
    return path.is_file() and any(line.strip() for line in path.open(encoding="utf-8"))
