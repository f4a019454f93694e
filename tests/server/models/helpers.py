"""Helpers of the model-layer tests: task construction and the independent reference computation."""

from __future__ import annotations

import numpy as np
import torch

from dualdistill.protocol.params import LogitsParams
from dualdistill_server.models import LogitsTask


def make_task(
    token_ids, start: int, *, top_k: int = 20, temperature: float = 1.0, mode: str = "topk",
    samples: int = 64, seed: int = 0,
) -> LogitsTask:
    params = LogitsParams(top_k=top_k, temperature=temperature, mode=mode, samples=samples, seed=seed)
    return LogitsTask(token_ids=np.asarray(token_ids, dtype=np.int64), start=start, params=params)


def random_ids(rng: np.random.Generator, length: int, vocab: int) -> np.ndarray:
    return rng.integers(0, vocab, size=length, dtype=np.int64)


def reference_logprobs(model: torch.nn.Module, task: LogitsTask) -> np.ndarray:
    """Independent reference: a plain unbatched forward, float64 log_softmax of rows start-1 .. T-2."""
    with torch.no_grad():
        logits = model(torch.as_tensor(task.token_ids)[None]).logits[0]  # (T, V)
    rows = logits[task.start - 1 : len(task.token_ids) - 1].double() / task.params.temperature
    return torch.log_softmax(rows, dim=-1).numpy()  # (R, V) float64
