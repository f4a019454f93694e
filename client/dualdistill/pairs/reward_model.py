"""`reward-model:PATH`: score responses with a local sequence-classification reward model.

    score(y) = logits[-1]  of AutoModelForSequenceClassification(text(x, y))   (num_labels 1 or more)

text(x, y): when the reward model's tokenizer has a chat template, the query's chat (its messages, or its
prompt as one user message) followed by the response as the assistant turn, rendered by that template;
otherwise the prompt and the response joined by a newline. Responses are scored one at a time (no
padding, so no pad-token assumptions) under a lock in a worker thread, so concurrent queries share one
model without racing it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence

from dualdistill.client.types import Completion
from dualdistill.pairs.scorer_base import Scorer


def query_messages(query: dict) -> list[dict]:
    """The query as a chat: its messages, or its prompt as a single user turn."""
    if "messages" in query:
        return [dict(m) for m in query["messages"]]
    return [{"role": "user", "content": query["prompt"]}]


def query_text(query: dict) -> str:
    """The query as plain text: its prompt, or its messages' contents joined by newlines."""
    if "prompt" in query:
        return query["prompt"]
    return "\n".join(m["content"] for m in query["messages"])


class RewardModelScorer(Scorer):
    def __init__(self, path: str, device: str = "cpu", max_length: int = 2048) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"reward-model:{path}"
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        self._lock = threading.Lock()

    def render(self, query: dict, response: str) -> str:
        """text(x, y) of the module docstring."""
        if getattr(self.tokenizer, "chat_template", None):
            chat = query_messages(query) + [{"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return f"{query_text(query)}\n{response}"

    def _score_one(self, query: dict, response: str) -> float:
        import torch

        encoded = self.tokenizer(
            self.render(query, response), return_tensors="pt", truncation=True, max_length=self.max_length
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**encoded).logits  # (1, num_labels)
        return float(logits[0, -1].float())

    def score(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        with self._lock:
            return [self._score_one(query, c.text) if c.token_ids else math.nan for c in completions]

    async def ascore(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        return await asyncio.to_thread(self.score, query, completions)

    def close(self) -> None:
        self.model = None
