"""Results -> HTTP JSON bodies (the shapes of docs/api.md); binary bodies come from core/payload.py."""

from __future__ import annotations

import json

import numpy as np

from dualdistill.protocol.results import SequenceLogits

from ..core import GenerateResult, LogitsResult


def _floats(values: np.ndarray) -> list:
    """float32 values as JSON numbers; non-finite ones (a -inf tail) as null."""
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    out = values.astype(object)
    out[~finite] = None
    return out.tolist()


def _rows(flat: list, row_lengths: np.ndarray) -> list[list]:
    """Flat ragged entries -> one list per row."""
    rows, offset = [], 0
    for length in row_lengths.tolist():
        rows.append(flat[offset : offset + length])
        offset += length
    return rows


def sequence_json(result: SequenceLogits) -> dict:
    """{"top_ids": [[...]], "top_logprobs": [[...]], "token_logprobs": [...], "tail_logprobs": [...]}
    with one inner list per position; "counts" too in sample mode."""
    out = {
        "top_ids": _rows(result.top_ids.tolist(), result.row_lengths),
        "top_logprobs": _rows(_floats(result.top_logprobs), result.row_lengths),
        "token_logprobs": _floats(result.token_logprobs),
        "tail_logprobs": _floats(result.tail_logprobs),
    }
    if result.counts is not None:
        out["counts"] = _rows(result.counts.tolist(), result.row_lengths)
    return out


def logits_json(result: LogitsResult) -> bytes:
    body = {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "request_id": result.request_id,
        "results": [sequence_json(r) for r in result.results],
    }
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")


def completion_dict(completion) -> dict:
    return {
        "prompt_index": int(completion.prompt_index),
        "prompt_token_ids": [int(i) for i in completion.prompt_token_ids],
        "token_ids": [int(i) for i in completion.token_ids],
        "text": completion.text,
        "finish_reason": completion.finish_reason,
    }


def generate_json(result: GenerateResult) -> bytes:
    body = {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "request_id": result.request_id,
        "completions": [completion_dict(c) for c in result.completions],
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
