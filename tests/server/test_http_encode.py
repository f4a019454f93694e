"""HTTP JSON bodies (http/encode.py) against a plain stdlib encoding of the same results."""

from __future__ import annotations

import json

import numpy as np

from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.core import LogitsResult
from dualdistill_server.http.encode import logits_json


def _plain(values: np.ndarray) -> list:
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]


def _plain_rows(flat: list, lengths: np.ndarray) -> list[list]:
    out, at = [], 0
    for n in lengths.tolist():
        out.append(flat[at : at + n])
        at += n
    return out


def _plain_body(result: LogitsResult) -> dict:
    results = []
    for r in result.results:
        item = {
            "top_ids": _plain_rows([int(i) for i in r.top_ids], r.row_lengths),
            "top_logprobs": _plain_rows(_plain(r.top_logprobs), r.row_lengths),
            "token_logprobs": _plain(r.token_logprobs),
            "tail_logprobs": _plain(r.tail_logprobs),
        }
        if r.counts is not None:
            item["counts"] = _plain_rows([int(c) for c in r.counts], r.row_lengths)
        results.append(item)
    return {"model": result.model, "fingerprint": result.fingerprint, "request_id": result.request_id,
            "results": results}  # fmt: skip


def _results(rng: np.random.Generator) -> list[SequenceLogits]:
    values = lambda n: -rng.exponential(3, n).astype(np.float32)  # noqa: E731
    topk = SequenceLogits.from_dense(rng.integers(0, 50_000, (6, 4)), np.sort(values(24).reshape(6, 4))[:, ::-1],
                                     values(6), values(6))  # fmt: skip
    topk.tail_logprobs[2] = -np.inf  # a row covering the vocab
    topk.top_logprobs[5] = np.float32(-1e-7)  # a value whose float64 decimal needs all 17 digits
    lengths = np.array([3, 0, 1, 2], dtype=np.int32)  # ragged, with an empty row
    sampled = SequenceLogits(lengths, rng.integers(0, 100, 6), values(6), values(4), values(4),
                             counts=rng.integers(1, 9, 6))  # fmt: skip
    return [topk, sampled]


def test_logits_json_parses_to_the_plain_encoding_bit_for_bit() -> None:
    result = LogitsResult("tiny", "0123456789abcdef", "req-1", _results(np.random.default_rng(0)))
    body = json.loads(logits_json(result))
    assert body == _plain_body(result)
    for mine, sent in zip(result.results, body["results"], strict=True):  # float64 parse -> the same float32
        parsed = np.array([v for row in sent["top_logprobs"] for v in row], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(parsed.view(np.int32), mine.top_logprobs.view(np.int32))


def test_logits_json_is_compact_and_has_no_non_finite_literals() -> None:
    text = logits_json(LogitsResult("tiny", "f" * 16, "r", _results(np.random.default_rng(1)))).decode()
    assert ": " not in text and ", " not in text
    assert "Infinity" not in text and "NaN" not in text and "null" in text
