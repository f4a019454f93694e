"""gRPC transport against a real `dualdistill serve` process (the session's `tiny_server`)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dualdistill.protocol import wire
from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from tests.server.helpers import (
    assert_same_result,
    expected_results,
    from_proto,
    plain_topk,
    random_sequences,
)


@pytest.fixture(scope="module")
def channel(tiny_server):
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> teacher_pb2_grpc.TeacherStub:
    return teacher_pb2_grpc.TeacherStub(channel)


def _request(sequences: list[dict], **params) -> pb.LogitsRequest:
    return pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(**s) for s in sequences], **params)


@pytest.mark.parametrize(
    "params",
    [{}, {"top_k": 9, "temperature": 0.6}, {"mode": "sample", "samples": 50, "seed": 4}],
    ids=["defaults", "k9-t0.6", "sample"],
)
def test_get_logits_equals_in_process_results(stub, tiny_model, params) -> None:
    sequences = random_sequences(320, [3, 21, 33], seed=9)
    response, call = stub.GetLogits.with_call(_request(sequences, **params), timeout=60)
    assert response.model == "tiny" and response.fingerprint == tiny_model.info.fingerprint
    assert dict(call.trailing_metadata())["x-request-id"]
    body = {"sequences": sequences, **params}
    for got, want in zip(response.results, expected_results(tiny_model, body), strict=True):
        assert_same_result(from_proto(got), want)


def test_get_logits_equals_a_plain_transformers_forward(stub, tiny_model_dir) -> None:
    sequence = random_sequences(320, [19], seed=21)[0]
    response = stub.GetLogits(_request([sequence], top_k=6), timeout=60)
    got = from_proto(response.results[0])
    want = plain_topk(tiny_model_dir, sequence["token_ids"], sequence["start"], k=6)
    assert got.top_ids.tolist() == want["top_ids"].reshape(-1).tolist()
    assert abs(got.top_logprobs - want["top_logprobs"].reshape(-1)).max() < 1e-4
    assert abs(got.token_logprobs - want["token_logprobs"]).max() < 1e-4
    assert abs(got.tail_logprobs - want["tail_logprobs"]).max() < 1e-4


def test_binary_payload_decodes_to_the_structured_results(stub) -> None:
    sequences = random_sequences(320, [12, 7], seed=2)
    structured = stub.GetLogits(_request(sequences, top_k=10), timeout=60)
    binary = stub.GetLogits(_request(sequences, top_k=10, format="binary-lossless"), timeout=60)
    assert not binary.results and binary.payload
    for got, want in zip(wire.decode(binary.payload), structured.results, strict=True):
        assert got.equals(from_proto(want))


def test_list_models(stub, tiny_model) -> None:
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert info.name == "tiny" and info.vocab_size == tiny_model.info.vocab_size
    assert info.tokenizer_sha256 == tiny_model.info.tokenizer_sha256
    assert info.fingerprint == tiny_model.info.fingerprint and info.eos_token_id == tiny_model.info.eos_token_id


def test_stream_logits_answers_every_request_with_its_id(stub, tiny_model) -> None:
    bodies = [{"sequences": random_sequences(320, [4 + 3 * i], seed=50 + i), "top_k": 2 + i} for i in range(6)]
    requests = [_request(b["sequences"], top_k=b["top_k"], request_id=f"r{i}") for i, b in enumerate(bodies)]
    responses = {r.request_id: r for r in stub.StreamLogits(iter(requests), timeout=60)}
    assert sorted(responses) == [f"r{i}" for i in range(6)]
    for i, body in enumerate(bodies):
        assert_same_result(from_proto(responses[f"r{i}"].results[0]), expected_results(tiny_model, body)[0])


def test_stream_error_aborts_with_the_failing_request_named(stub) -> None:
    good = _request([{"token_ids": [1, 2, 3], "start": 1}], request_id="ok-1")
    bad = _request([{"token_ids": [1, 2, 3], "start": 3}], request_id="bad-2")
    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamLogits(iter([good, bad]), timeout=60))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad-2" in error.value.details() and "sequences[0].start" in error.value.details()


def test_generate_matches_http_generation(stub, tiny_server) -> None:
    import httpx

    request = pb.GenerateRequest(
        model="tiny", prompts=[pb.Prompt(text="What is"), pb.Prompt(token_ids=[9, 8, 7])],
        max_new_tokens=5, temperature=0.8, n=2, seed=3,
    )
    response = stub.Generate(request, timeout=60)
    http = httpx.post(tiny_server.http_url + "/v1/generate", timeout=60, json={
        "model": "tiny", "prompts": [{"text": "What is"}, {"token_ids": [9, 8, 7]}],
        "max_new_tokens": 5, "temperature": 0.8, "n": 2, "seed": 3,
    }).json()
    assert len(response.completions) == 4
    for got, want in zip(response.completions, http["completions"], strict=True):
        assert got.prompt_index == want["prompt_index"] and list(got.token_ids) == want["token_ids"]
        assert list(got.prompt_token_ids) == want["prompt_token_ids"] and got.text == want["text"]


def test_health_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "dualdistill.v1.Teacher"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"dualdistill.v1.Teacher", "grpc.health.v1.Health"} <= names


def test_deadline_and_message_size_limits(stub) -> None:
    # A sequence no other test sends, so the result cache cannot answer it within the 5 ms deadline.
    with pytest.raises(grpc.RpcError) as late:
        stub.GetLogits(_request([{"token_ids": [17, 201, 3, 88, 140, 9], "start": 2}]), timeout=0.005)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    huge = _request([{"token_ids": [2_000_000] * 80_000, "start": 1}])  # 320 kB > max_message_bytes 200 kB
    with pytest.raises(grpc.RpcError) as too_big:
        stub.GetLogits(huge, timeout=30)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models  # still serving


def test_body_request_id_is_the_calls_id_in_metadata_and_logs(stub, tiny_server) -> None:
    import json
    import time

    sequence = random_sequences(320, [5], seed=2)[0]
    _, call = stub.GetLogits.with_call(_request([sequence], request_id="grpc-body-17"), timeout=60)
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-body-17"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the access log line is written as the call finishes
        records = [json.loads(line) for line in tiny_server.log_path.read_text().splitlines() if line.startswith("{")]
        if any(r.get("request_id") == "grpc-body-17" and r.get("route", "").endswith("/GetLogits") for r in records):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no log line of the GetLogits call carries the body's request_id")
