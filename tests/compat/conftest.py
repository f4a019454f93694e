"""Compat-test fixtures: the tiny model in this process (the reference the endpoints must equal), and
the real client libraries, skipped with a reason where one is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The model `tiny_server` serves, loaded here with its settings."""
    from dualdistill_server.models import load_model

    return load_model("tiny", str(tiny_model_dir), device="cpu", dtype="float32", max_seq_len=256, max_top_k=512)


def reference_logprobs(model, token_ids: list[int]) -> np.ndarray:
    """(T - 1, V) float32 log p(. | x[:i]) for i = 1 .. T-1, from a plain forward of the sequence alone."""
    with torch.inference_mode():
        logits = model.model(torch.tensor([token_ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).numpy()


def reference_rank(logprobs_row: np.ndarray, token_id: int) -> int:
    """vLLM's rank: #{ids whose logprob >= the token's}."""
    return int((logprobs_row >= logprobs_row[token_id]).sum())
