"""Bad requests on both transports: 422 / INVALID_ARGUMENT (404 / NOT_FOUND for a model) naming the field,
and the server keeps serving afterwards."""

from __future__ import annotations

import copy
import json
import math

import grpc
import httpx
import pytest
from google.protobuf import json_format

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc

GOOD = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
HTTP_ONLY = "http-only"  # not representable as a protobuf message (unknown field, wrong JSON type ...)


def _with(path: str, value) -> dict:
    """GOOD with one field replaced; path like "sequences.0.start"."""
    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return body


# (case id, body, expected field, HTTP-only?)
LOGITS_CASES = [
    ("oov-id", _with("sequences.0.token_ids", [1, 2, 320]), "sequences[0].token_ids[2]", False),
    ("negative-id", _with("sequences.0.token_ids", [1, -2, 3]), "sequences[0].token_ids[1]", False),
    ("empty-sequence", _with("sequences.0.token_ids", []), "sequences[0].token_ids", False),
    ("one-token", _with("sequences.0.token_ids", [5]), "sequences[0].token_ids", False),
    ("too-long", _with("sequences.0.token_ids", [5] * 257), "sequences[0].token_ids", False),
    ("start-0", _with("sequences.0.start", 0), "sequences[0].start", False),
    ("start-eq-len", _with("sequences.0.start", 4), "sequences[0].start", False),
    ("no-sequences", _with("sequences", []), "sequences", False),
    ("k-0", _with("top_k", 0), "top_k", False),
    ("k-above-max", _with("top_k", 321), "top_k", False),
    ("temperature-0", _with("temperature", 0.0), "temperature", False),
    ("temperature-nan", _with("temperature", float("nan")), "temperature", False),
    ("temperature-inf", _with("temperature", float("inf")), "temperature", False),
    ("samples-0", {**_with("samples", 0), "mode": "sample"}, "samples", False),
    ("samples-above-max", {**_with("samples", 513), "mode": "sample"}, "samples", False),
    ("unknown-mode", _with("mode", "beam"), "mode", False),
    ("unknown-format", _with("format", "xml"), "format", False),
    ("no-model", _with("model", ""), "model", False),
    ("unknown-field", {**GOOD, "temprature": 0.5}, "temprature", True),
    ("k-string", _with("top_k", "five"), "top_k", True),
    ("k-bool", _with("top_k", True), "top_k", True),
    ("k-fraction", _with("top_k", 2.5), "top_k", True),
    ("ids-string", _with("sequences.0.token_ids", "abc"), "sequences[0].token_ids", True),
    ("id-string", _with("sequences.0.token_ids", [1, "2", 3]), "sequences[0].token_ids[1]", True),
    ("sequences-object", _with("sequences", {}), "sequences", True),
    ("unknown-sequence-field", _with("sequences.0.begin", 1), "sequences[0].begin", True),
]

GENERATE_GOOD = {"model": "tiny", "prompts": [{"text": "hello"}]}
GENERATE_CASES = [
    ("two-prompt-kinds", {**GENERATE_GOOD, "prompts": [{"text": "a", "token_ids": [1]}]}, "prompts[0]", False),
    ("empty-prompt", {**GENERATE_GOOD, "prompts": [{}]}, "prompts[0]", False),
    ("oov-prompt-id", {**GENERATE_GOOD, "prompts": [{"token_ids": [1, 999]}]}, "prompts[0].token_ids[1]", False),
    ("negative-temperature", {**GENERATE_GOOD, "temperature": -1.0}, "temperature", False),
    ("n-0", {**GENERATE_GOOD, "n": 0}, "n", False),
    ("top-p-0", {**GENERATE_GOOD, "top_p": 0.0}, "top_p", False),
    ("prompt-too-long", {**GENERATE_GOOD, "prompts": [{"token_ids": [5] * 256}]}, "prompts[0].token_ids", False),
]


@pytest.fixture(scope="module")
def stub(tiny_server):
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        yield teacher_pb2_grpc.TeacherStub(channel)


def _proto(body: dict, message):
    """ParseDict, except that non-finite top-level floats (which proto JSON spells as strings) are set directly."""
    special = {k: v for k, v in body.items() if isinstance(v, float) and not math.isfinite(v)}
    json_format.ParseDict({k: v for k, v in body.items() if k not in special}, message)
    for key, value in special.items():
        setattr(message, key, value)
    return message


def _post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN/inf as JSON extensions
    return httpx.post(server.http_url + path, content=content, timeout=60,
                      headers={"content-type": "application/json"})


def _assert_http_invalid(response: httpx.Response, field: str | None) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field
    if field:
        assert error["message"].startswith(f"{field}: ")


def _assert_grpc_invalid(call, request, field: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: ")
    assert dict(error.trailing_metadata())["x-dualdistill-field"] == field


@pytest.mark.parametrize(("body", "field"), [(c[1], c[2]) for c in LOGITS_CASES], ids=[c[0] for c in LOGITS_CASES])
def test_bad_logits_request_over_http(tiny_server, body, field) -> None:
    _assert_http_invalid(_post(tiny_server, "/v1/logits", body), field)


GRPC_LOGITS_CASES = [c for c in LOGITS_CASES if not c[3]]


@pytest.mark.parametrize(("body", "field"), [(c[1], c[2]) for c in GRPC_LOGITS_CASES],
                         ids=[c[0] for c in GRPC_LOGITS_CASES])
def test_bad_logits_request_over_grpc(stub, body, field) -> None:
    _assert_grpc_invalid(stub.GetLogits, _proto(body, pb.LogitsRequest()), field)


@pytest.mark.parametrize(("body", "field"), [(c[1], c[2]) for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES])
def test_bad_generate_request_on_both_transports(tiny_server, stub, body, field) -> None:
    _assert_http_invalid(_post(tiny_server, "/v1/generate", body), field)
    _assert_grpc_invalid(stub.Generate, json_format.ParseDict(body, pb.GenerateRequest()), field)


def test_invalid_json_and_unknown_routes(tiny_server) -> None:
    _assert_http_invalid(_post(tiny_server, "/v1/logits", b'{"model": "tiny", "sequences": ['), None)
    missing = httpx.get(tiny_server.http_url + "/v2/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    wrong_method = httpx.get(tiny_server.http_url + "/v1/logits", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "UNIMPLEMENTED"


def test_unknown_model_is_not_found_on_both_transports(tiny_server, stub) -> None:
    body = {**GOOD, "model": "gpt-9"}
    response = _post(tiny_server, "/v1/logits", body)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "NOT_FOUND", "field": "model",
        "message": "model: model 'gpt-9' is not served here (served: tiny)",
    }
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetLogits(json_format.ParseDict(body, pb.LogitsRequest()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "gpt-9" in raised.value.details()


def test_server_still_serves_after_bad_requests(tiny_server, stub) -> None:
    for case in LOGITS_CASES[:5]:
        _post(tiny_server, "/v1/logits", case[1])
    assert httpx.get(tiny_server.http_url + "/readyz", timeout=10).status_code == 200
    response = _post(tiny_server, "/v1/logits", GOOD)
    assert response.status_code == 200 and len(response.json()["results"][0]["top_ids"]) == 3
    assert len(stub.GetLogits(json_format.ParseDict(GOOD, pb.LogitsRequest()), timeout=30).results) == 1
