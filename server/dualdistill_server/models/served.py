"""`ServedModel`: one loaded causal LM + tokenizer, the blocking compute the service core calls.

The core validates requests and batches them; this class does one padded forward per call and the
post-processing in `distributions.py` (logits) or the sampling loop in `generation.py` (completions).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.models.distributions import sequence_distributions
from dualdistill_server.models.generation import forward_features, generate_rows
from dualdistill_server.models.types import GeneratedCompletion, LogitsTask, ModelInfo


class ServedModel:
    """A model ready to serve: `compute_logits` and `generate` are blocking and thread-compatible (the
    batcher calls them from a worker thread, one call at a time per model)."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        info: ModelInfo,
        device: torch.device,
        *,
        stop_ids: set[int],
        pad_id: int,
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.stop_ids = stop_ids  # ids that end a completion (finish_reason "stop")
        self.pad_id = pad_id  # fills padded positions; masked out, so any valid id would do
        # Rows post-processed together: bounds the float32 (rows, V) buffers (2048 x 49152 x 4 B = 400 MiB).
        self.max_postprocess_rows = 2048
        _, self._has_logits_to_keep = forward_features(model)

    # -- logits -------------------------------------------------------------------------------------
    def compute_logits(self, tasks: list[LogitsTask]) -> list[SequenceLogits]:
        """One right-padded forward over all tasks, then `sequence_distributions` on the rows they need.

        Rows: task b needs logits[b, i - 1] for i in [start_b, T_b). The model is asked only for the
        positions from min(start_b) - 1 on (`logits_to_keep`), and the needed rows are gathered into one
        (N, V) tensor before the float32 post-processing, so (B, T, V) float32 is never materialised.
        Right padding + attention mask keeps every real position's logits equal to an unbatched forward.
        Post-processing runs on groups of whole sequences of at most `max_postprocess_rows` rows (a longer
        sequence is a group of its own); the results do not depend on the grouping.
        """
        if not tasks:
            return []
        lengths = [len(t.token_ids) for t in tasks]
        longest = max(lengths)
        input_ids, mask = self._inputs(tasks, lengths, longest)
        first = min(t.start for t in tasks) - 1  # earliest logits position any task needs
        with torch.inference_mode():
            extra = {"logits_to_keep": longest - first} if self._has_logits_to_keep else {}
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=None if mask is None else mask.to(self.device),
                use_cache=False, **extra,
            ).logits  # (B, longest - first, V) or (B, longest, V)
            offset = longest - logits.shape[1]
            results: list[SequenceLogits] = []
            for group in self._groups(tasks):
                if len(group) == 1:  # one sequence's rows are consecutive: a view, no index tensors, no copy
                    b = group[0]
                    rows = logits[b, tasks[b].start - 1 - offset : lengths[b] - 1 - offset]  # (N_group, V)
                else:
                    batch_index = torch.cat([torch.full((tasks[b].num_rows,), b, dtype=torch.long) for b in group])
                    position = torch.cat([torch.arange(tasks[b].start - 1, lengths[b] - 1) for b in group])
                    rows = logits[batch_index.to(self.device), (position - offset).to(self.device)]  # (N_group, V)
                results.extend(sequence_distributions(rows, [tasks[b] for b in group]))
            return results

    def _inputs(self, tasks: list[LogitsTask], lengths: list[int], longest: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input_ids (B, longest) right-padded with pad_id, attention mask (B, longest)), on the host. The
        mask is None when no sequence is padded: all ones means no mask, and without one transformers
        skips building and checking it (the logits are the same, bit for bit)."""
        if all(length == longest for length in lengths):
            return torch.from_numpy(np.stack([np.asarray(t.token_ids, dtype=np.int64) for t in tasks])), None
        input_ids = torch.full((len(tasks), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(tasks), longest), dtype=torch.long)
        for b, task in enumerate(tasks):
            input_ids[b, : lengths[b]] = torch.from_numpy(np.asarray(task.token_ids, dtype=np.int64))
            mask[b, : lengths[b]] = 1
        return input_ids, mask

    def _groups(self, tasks: list[LogitsTask]) -> list[list[int]]:
        """Consecutive task indices, at most max_postprocess_rows rows per group (a longer task alone)."""
        groups: list[list[int]] = [[]]
        rows = 0
        for b, task in enumerate(tasks):
            if groups[-1] and rows + task.num_rows > self.max_postprocess_rows:
                groups.append([])
                rows = 0
            groups[-1].append(b)
            rows += task.num_rows
        return groups

    # -- completions --------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        n: int,
        seed: int,
    ) -> list[GeneratedCompletion]:
        """n completions per prompt, ordered by prompt then sample. temperature 0 = greedy (top_p unused)."""
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if n < 1 or max_new_tokens < 0:
            raise ValueError(f"need n >= 1 and max_new_tokens >= 0, got n={n}, max_new_tokens={max_new_tokens}")
        prompts = [[int(i) for i in prompt] for prompt in prompts]
        rows = generate_rows(
            self.model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            n=n,
            seed=seed,
            stop_ids=self.stop_ids,
            max_seq_len=self.info.max_seq_len,
            pad_id=self.pad_id,
            device=self.device,
        )
        return [
            GeneratedCompletion(
                prompt_index=row.prompt_index,
                prompt_token_ids=list(prompts[row.prompt_index]),
                token_ids=row.token_ids,
                text=self.decode(row.token_ids),
                finish_reason=row.finish_reason,
            )
            for row in rows
        ]

    # -- text -----------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text, with the tokenizer's default special tokens (e.g. a BOS if it adds one)."""
        return list(self.tokenizer.encode(text))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Chat template with add_generation_prompt; the template writes the special tokens itself."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"model {self.name!r} has no chat template; send the prompt as text or token_ids instead"
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(f"messages[{index}] must be an object with 'role' and 'content'")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens (end-of-turn, stop) left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
