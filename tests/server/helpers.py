"""Reference computations and parsers for the server tests.

Every number a transport returns is compared with `expected_results` (the model layer's
`compute_logits`, one sequence per call, in this process) and, for one case per transport, with
`plain_topk` (a plain transformers forward + log_softmax written here, independent of the server code).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits

LOGPROB_ATOL = 2e-5  # batched vs single forwards differ by float32 rounding only


def expected_results(model, request: dict) -> list[SequenceLogits]:
    """What the service must return for a /v1/logits body, each sequence computed alone."""
    from dualdistill_server.models import LogitsTask

    out = []
    for sequence in request["sequences"]:
        task = LogitsTask(
            token_ids=np.asarray(sequence["token_ids"], dtype=np.int64),
            start=sequence["start"],
            params=LogitsParams(
                top_k=request.get("top_k", 20),
                temperature=float(np.float32(request.get("temperature", 1.0))),
                mode=request.get("mode", "topk"),
                samples=request.get("samples", 64),
                seed=request.get("seed", 0),
            ),
        )
        (result,) = model.compute_logits([task])
        out.append(result)
    return out


def plain_topk(model_dir, token_ids: list[int], start: int, k: int, temperature: float = 1.0) -> dict:
    """Independent reference: transformers forward, float32 log_softmax(logits / T), top-k, tail."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits[start - 1 : len(token_ids) - 1] / temperature, dim=-1)  # (R, V)
    values, ids = torch.topk(logprobs, k, dim=-1)  # (R, k)
    rest = logprobs.clone()
    rest.scatter_(1, ids, float("-inf"))
    return {
        "top_ids": ids.numpy(),
        "top_logprobs": values.numpy(),
        "token_logprobs": logprobs.gather(1, torch.tensor(token_ids[start:])[:, None])[:, 0].numpy(),
        "tail_logprobs": torch.logsumexp(rest, dim=-1).numpy(),
    }


def _float_array(values: list) -> np.ndarray:
    return np.asarray([-np.inf if v is None else v for v in values], dtype=np.float32)


def from_json(result: dict) -> SequenceLogits:
    """A JSON result object of POST /v1/logits -> SequenceLogits (null -> -inf)."""
    rows = result["top_ids"]
    return SequenceLogits(
        row_lengths=np.asarray([len(row) for row in rows], dtype=np.int32),
        top_ids=np.asarray([i for row in rows for i in row], dtype=np.int32),
        top_logprobs=_float_array([v for row in result["top_logprobs"] for v in row]),
        token_logprobs=_float_array(result["token_logprobs"]),
        tail_logprobs=_float_array(result["tail_logprobs"]),
        counts=None if "counts" not in result else np.asarray([c for row in result["counts"] for c in row]),
    )


def from_proto(message) -> SequenceLogits:
    """A proto SequenceResult -> SequenceLogits."""
    return SequenceLogits(
        row_lengths=np.asarray(message.row_lengths),
        top_ids=np.asarray(message.top_ids),
        top_logprobs=np.asarray(message.top_logprobs, dtype=np.float32),
        token_logprobs=np.asarray(message.token_logprobs, dtype=np.float32),
        tail_logprobs=np.asarray(message.tail_logprobs, dtype=np.float32),
        counts=np.asarray(message.counts) if len(message.counts) else None,
    )


def assert_same_result(got: SequenceLogits, want: SequenceLogits, atol: float = LOGPROB_ATOL) -> None:
    """Ids, row lengths and counts exactly; logprobs within float32 noise (-inf must match -inf)."""
    np.testing.assert_array_equal(got.row_lengths, want.row_lengths)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, rtol=0, atol=atol)
    np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, rtol=0, atol=atol)
    np.testing.assert_allclose(got.tail_logprobs, want.tail_logprobs, rtol=0, atol=atol)
    assert (got.counts is None) == (want.counts is None)
    if want.counts is not None:
        np.testing.assert_array_equal(got.counts, want.counts)


def random_sequences(vocab_size: int, lengths: list[int], seed: int = 0) -> list[dict]:
    """Sequences of random ids with start = a third of the way in (at least 1)."""
    rng = np.random.default_rng(seed)
    return [
        {"token_ids": rng.integers(0, vocab_size, size=n).tolist(), "start": max(1, n // 3)} for n in lengths
    ]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples `name{...}` in `text` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total
