"""Results -> HTTP JSON bodies (the shapes of docs/api.md); binary bodies come from core/payload.py."""

from __future__ import annotations

import json

import numpy as np
import orjson

from dualdistill.protocol.results import SequenceLogits

from ..core import GenerateResult, LogitsResult

# orjson writes numpy arrays in C (no Python object per entry) and every non-finite float as null.
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _floats(values: np.ndarray) -> np.ndarray:
    """float32 values for orjson, as float64: each is then written as the shortest decimal of its exact
    float64 value (what json.dumps of float(value) writes), so a float64 parse gives it back bit for bit;
    non-finite ones (a -inf tail) become null."""
    return values.astype(np.float64)


def _rows(flat: np.ndarray, row_lengths: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """Flat ragged entries -> one row per position: an (R, k) view when every row holds k entries
    ("topk" mode), else a list of row slices."""
    rows = len(row_lengths)
    if rows and flat.size == rows * int(row_lengths[0]) and (row_lengths == row_lengths[0]).all():
        return flat.reshape(rows, int(row_lengths[0]))
    return np.split(flat, np.cumsum(row_lengths[:-1])) if rows else []


def sequence_json(result: SequenceLogits) -> dict:
    """{"top_ids": [[...]], "top_logprobs": [[...]], "token_logprobs": [...], "tail_logprobs": [...]}
    with one inner list per position; "counts" too in sample mode. Values are numpy arrays (`dumps`)."""
    out = {
        "top_ids": _rows(result.top_ids, result.row_lengths),
        "top_logprobs": _rows(_floats(result.top_logprobs), result.row_lengths),
        "token_logprobs": _floats(result.token_logprobs),
        "tail_logprobs": _floats(result.tail_logprobs),
    }
    if result.counts is not None:
        out["counts"] = _rows(result.counts, result.row_lengths)
    return out


def dumps(body: dict) -> bytes:
    """Compact JSON of a body whose leaves may be numpy arrays; non-finite floats as null."""
    return orjson.dumps(body, option=_NUMPY)


def logits_json(result: LogitsResult) -> bytes:
    body = {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "request_id": result.request_id,
        "results": [sequence_json(r) for r in result.results],
    }
    return dumps(body)


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
