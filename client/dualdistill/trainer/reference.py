"""The DPO reference: sequence log-probabilities of a frozen model on each pair's two responses.

    served:NAME  the teacher service scores the sequences with model NAME (fetched with the teacher rows,
                 `trainer.teacher`): sum of its token_logprobs over the response; no second model here
    local:DIR    a frozen copy of a local HF model, run under no_grad on the student's batch
    column       ref_chosen_logps / ref_rejected_logps stored in the pairs file

All three give the same quantity, log pi_ref(response | prompt) summed over response tokens (the mean
when the loss uses length_normalize), in float32.
"""

from __future__ import annotations

import numpy as np
import torch

from dualdistill.trainer.config import parse_reference
from dualdistill.trainer.data import PairBatch, PairExample
from dualdistill.trainer.distributed import autocast
from dualdistill.trainer.teacher import FetchedTeacher


class Reference:
    """`scores(batch, fetched) -> (2B,)` reference log-probs of [chosen; rejected] on `device`."""

    def __init__(
        self, spec: str, device: torch.device, length_normalize: bool, autocast_dtype: torch.dtype | None
    ):
        self.kind, self.value = parse_reference(spec)
        self.device = device
        self.length_normalize = length_normalize
        self.autocast_dtype = autocast_dtype
        self.model = None
        if self.kind == "local":
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.value, dtype=torch.float32).to(device)
            self.model.eval()
            self.model.requires_grad_(False)

    def check_examples(self, examples: list[PairExample], where: str) -> None:
        """`column` needs both columns on every pair; say which pair lacks them before training starts."""
        if self.kind != "column":
            return
        for example in examples:
            if example.ref_chosen_logps is None or example.ref_rejected_logps is None:
                raise ValueError(
                    f"reference='column' but pair {example.id!r} of {where} has no ref_chosen_logps / "
                    "ref_rejected_logps; use reference: served:NAME or local:DIR, or add the columns"
                )

    def scores(self, batch: PairBatch, fetched: FetchedTeacher) -> torch.Tensor:
        if self.kind == "column":
            logps = [e.ref_chosen_logps for e in batch.examples] + [
                e.ref_rejected_logps for e in batch.examples
            ]
            return torch.tensor(logps, dtype=torch.float32, device=self.device)
        if self.kind == "served":
            if fetched.ref_chosen is None or fetched.ref_rejected is None:
                raise RuntimeError("the teacher source returned no served reference scores")
            return torch.from_numpy(np.concatenate([fetched.ref_chosen, fetched.ref_rejected])).to(
                self.device
            )
        from dualdistill.losses import sequence_logps

        input_ids = batch.input_ids.to(self.device)
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            logits = self.model(
                input_ids=input_ids, attention_mask=batch.attention_mask.to(self.device)
            ).logits
            labels, loss_mask = batch.labels.to(self.device), batch.loss_mask.to(self.device)
            logps = sequence_logps(logits, labels, loss_mask, self.length_normalize)
        return logps.float()
