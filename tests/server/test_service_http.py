"""HTTP transport against a real `dualdistill serve` process (the session's `tiny_server`)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from dualdistill.protocol import wire
from dualdistill.protocol.v1 import teacher_pb2
from tests.server.helpers import (
    assert_same_result,
    expected_results,
    from_json,
    metric_sum,
    plain_topk,
    random_sequences,
)

BINARY = "application/x-dualdistill-logits"


def _post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.http_url + path, json=body, timeout=60, **kwargs)


def _metrics(server) -> str:
    return httpx.get(server.http_url + "/metrics", timeout=10).text


@pytest.mark.parametrize(
    "params",
    [
        {},  # defaults: topk 20, temperature 1
        {"top_k": 7, "temperature": 0.7},
        {"top_k": 64, "temperature": 1.3},
        {"mode": "sample", "samples": 32, "seed": 11, "temperature": 0.9},
    ],
    ids=["defaults", "k7-t0.7", "k64-t1.3", "sample"],
)
def test_json_logits_equal_in_process_results(tiny_server, tiny_model, params) -> None:
    body = {"model": "tiny", "sequences": random_sequences(tiny_model.info.vocab_size, [5, 17, 40, 2]), **params}
    json_format.Parse(json.dumps(body), teacher_pb2.LogitsRequest())  # the body is a valid proto JSON as is
    response = _post(tiny_server, "/v1/logits", body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "tiny" and data["fingerprint"] == tiny_model.info.fingerprint
    assert response.headers["x-request-id"] == data["request_id"] != ""
    got = [from_json(r) for r in data["results"]]
    for result, sequence in zip(data["results"], body["sequences"], strict=True):
        assert len(result["top_ids"]) == len(sequence["token_ids"]) - sequence["start"]
        assert ("counts" in result) == (params.get("mode") == "sample")
    for g, want in zip(got, expected_results(tiny_model, body), strict=True):
        assert_same_result(g, want)


def test_json_logits_equal_a_plain_transformers_forward(tiny_server, tiny_model_dir) -> None:
    sequence = random_sequences(320, [24], seed=3)[0]
    body = {"model": "tiny", "sequences": [sequence], "top_k": 5, "temperature": 0.5}
    (result,) = _post(tiny_server, "/v1/logits", body).json()["results"]
    want = plain_topk(tiny_model_dir, sequence["token_ids"], sequence["start"], k=5, temperature=0.5)
    np.testing.assert_array_equal(np.asarray(result["top_ids"]), want["top_ids"])
    np.testing.assert_allclose(np.asarray(result["top_logprobs"]), want["top_logprobs"], atol=1e-4)
    np.testing.assert_allclose(result["token_logprobs"], want["token_logprobs"], atol=1e-4)
    np.testing.assert_allclose(result["tail_logprobs"], want["tail_logprobs"], atol=1e-4)


def test_rows_covering_the_vocab_have_null_tails(tiny_server, tiny_model) -> None:
    vocab = tiny_model.info.vocab_size
    body = {"model": "tiny", "sequences": [{"token_ids": [3, 4, 5], "start": 1}], "top_k": vocab}
    response = _post(tiny_server, "/v1/logits", body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["tail_logprobs"] == [None, None]  # -inf is not JSON: null
    assert sorted(result["top_ids"][0]) == list(range(vocab))
    assert_same_result(from_json(result), expected_results(tiny_model, body)[0])


@pytest.mark.parametrize("fmt", ["binary", "binary-lossless"])
@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_binary_formats_decode_to_the_json_results(tiny_server, tiny_model, fmt, mode) -> None:
    body = {"model": "tiny", "sequences": random_sequences(320, [9, 30], seed=5), "top_k": 12, "mode": mode,
            "samples": 40, "request_id": "bin-1"}
    exact = [from_json(r) for r in _post(tiny_server, "/v1/logits", body).json()["results"]]
    response = _post(tiny_server, "/v1/logits", {**body, "format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == BINARY
    assert response.headers["x-dualdistill-model"] == "tiny"
    assert response.headers["x-dualdistill-fingerprint"] == tiny_model.info.fingerprint
    assert response.headers["x-request-id"] == "bin-1"
    decoded = wire.decode(response.content)
    assert len(decoded) == len(exact)
    for got, want in zip(decoded, exact, strict=True):
        if fmt == "binary-lossless":
            assert got.equals(want)
        else:  # ids, counts, token and tail logprobs exact; row values quantized (docs/wire-format.md)
            np.testing.assert_array_equal(got.token_logprobs, want.token_logprobs)
            np.testing.assert_array_equal(got.tail_logprobs, want.tail_logprobs)
            assert float(wire.kl_exact_vs_decoded(want, got).max()) < 1e-3


def test_models_endpoint_lists_the_model_info(tiny_server, tiny_model) -> None:
    models = httpx.get(tiny_server.http_url + "/v1/models", timeout=10).json()["models"]
    assert models == [tiny_model.info.to_dict()]


def test_request_id_header_is_echoed_or_generated(tiny_server) -> None:
    body = {"model": "tiny", "sequences": [{"token_ids": [1, 2, 3], "start": 2}]}
    given = _post(tiny_server, "/v1/logits", body, headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42" and given.json()["request_id"] == "trace-42"
    in_body = _post(tiny_server, "/v1/logits", {**body, "request_id": "body-7"}, headers={"x-request-id": "h"})
    assert in_body.headers["x-request-id"] == "body-7" and in_body.json()["request_id"] == "body-7"
    fresh = httpx.get(tiny_server.http_url + "/healthz", timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert "trace-42" in tiny_server.log_tail(400)  # JSON logs carry the request id


def test_probes_and_metrics(tiny_server) -> None:
    assert httpx.get(tiny_server.http_url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(tiny_server.http_url + "/readyz", timeout=10).json() == {"status": "ready"}
    text = _metrics(tiny_server)
    for name in ("dualdistill_requests_total", "dualdistill_request_seconds", "dualdistill_forward_seconds",
                 "dualdistill_forward_tokens_total", "dualdistill_batch_tokens", "dualdistill_queue_tokens"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert httpx.get(tiny_server.http_url + "/openapi.json", timeout=10).json()["paths"]["/v1/logits"]


def test_concurrent_requests_are_coalesced_into_shared_forwards(tiny_server, tiny_model) -> None:
    bodies = [{"model": "tiny", "sequences": random_sequences(320, [8 + i], seed=100 + i), "top_k": 3 + i}
              for i in range(8)]
    before = _metrics(tiny_server)

    async def send_all():
        async with httpx.AsyncClient(base_url=tiny_server.http_url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/logits", json=b) for b in bodies))

    responses = asyncio.run(send_all())
    after = _metrics(tiny_server)
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200
        assert_same_result(from_json(response.json()["results"][0]), expected_results(tiny_model, body)[0])
    forwards = metric_sum(after, "dualdistill_batch_sequences_count") - metric_sum(before, "dualdistill_batch_sequences_count")
    sequences = metric_sum(after, "dualdistill_batch_sequences_sum") - metric_sum(before, "dualdistill_batch_sequences_sum")
    assert sequences == 8
    assert forwards < 8, f"8 concurrent sequences took {forwards} forwards"
    ok = metric_sum(after, "dualdistill_requests_total", route="/v1/logits", model="tiny", code="OK")
    assert ok - metric_sum(before, "dualdistill_requests_total", route="/v1/logits", model="tiny", code="OK") == 8


def test_generate_returns_completions_that_match_in_process_generation(tiny_server, tiny_model) -> None:
    body = {
        "model": "tiny",
        "prompts": [{"text": "The quick brown"}, {"token_ids": [5, 6, 7]},
                    {"messages": [{"role": "user", "content": "What is 12 plus 30?"}]}],
        "max_new_tokens": 6, "temperature": 0, "n": 2, "request_id": "gen-1",
    }
    json_format.Parse(json.dumps(body), teacher_pb2.GenerateRequest())
    response = _post(tiny_server, "/v1/generate", body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["request_id"] == "gen-1" and data["fingerprint"] == tiny_model.info.fingerprint
    prompts = [tiny_model.encode_text("The quick brown"), [5, 6, 7],
               tiny_model.encode_chat([{"role": "user", "content": "What is 12 plus 30?"}])]
    want = tiny_model.generate(prompts, max_new_tokens=6, temperature=0.0, top_p=1.0, n=2, seed=0)
    assert [c["prompt_index"] for c in data["completions"]] == [0, 0, 1, 1, 2, 2]
    for got, expected in zip(data["completions"], want, strict=True):
        assert got["prompt_token_ids"] == list(expected.prompt_token_ids)
        assert got["token_ids"] == list(expected.token_ids)
        assert got["text"] == expected.text and got["finish_reason"] == expected.finish_reason


def test_deadline_seconds_gives_504(tiny_server) -> None:
    # A sequence no other test sends, so the result cache cannot answer it; the batching window alone is 30 ms.
    body = {"model": "tiny", "sequences": [{"token_ids": [23, 7, 190, 64, 5, 77], "start": 2}], "deadline_seconds": 0.001}
    response = _post(tiny_server, "/v1/logits", body)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"


def test_body_over_the_limit_gives_413(tiny_server) -> None:
    body = {"model": "tiny", "sequences": [{"token_ids": [1000] * 50_000, "start": 1}]}  # 250 kB > 200 kB
    response = _post(tiny_server, "/v1/logits", body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert "max_body_bytes" in response.json()["error"]["message"]
    # Chunked upload (no Content-Length) is counted while read.
    chunks = iter([json.dumps(body).encode()[i : i + 50_000] for i in range(0, 300_000, 50_000)])
    streamed = httpx.post(tiny_server.http_url + "/v1/logits", content=chunks, timeout=60,
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(tiny_server.http_url + "/readyz", timeout=10).status_code == 200
