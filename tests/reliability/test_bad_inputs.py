"""The bad-input matrix (Triton's L0_input_validation shape): one row per kind of bad request, with the
HTTP status and the gRPC status code the contract promises for it, checked on both transports.

Which field each error names is tested in tests/server/test_service_validation.py; this table pins the
status codes, including the ones that field-level validation does not produce (413, 401, bodies that
are not UTF-8, unknown model). `grpc` is the message to send (a LogitsRequest, or raw bytes for what a
typed stub cannot express), DERIVE to build it from the HTTP body, or None where protobuf's typing
makes the case impossible (a string where a number belongs).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.protobuf import json_format

from dualdistill.protocol.v1 import teacher_pb2 as pb
from tests.reliability.support import Outcome, grpc_bearer, raw_unary

GET_LOGITS = "/dualdistill.v1.Teacher/GetLogits"
GOOD = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
DERIVE = "derive"
CODE_OF_STATUS = {200: "OK", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 422: "INVALID_ARGUMENT"}
TEN_MB = 10 * 1024 * 1024


def _with(path: str, value) -> dict:
    """GOOD with one field set; path like "sequences.0.start"."""
    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return body


def _proto(body: dict) -> bytes:
    """The LogitsRequest for a JSON body; non-finite floats (strings in proto JSON) are set directly."""
    special = {k: v for k, v in body.items() if isinstance(v, float) and not math.isfinite(v)}
    message = json_format.ParseDict({k: v for k, v in body.items() if k not in special}, pb.LogitsRequest())
    for key, value in special.items():
        setattr(message, key, value)
    return message.SerializeToString()


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (bytes / string / message)."""
    out, n = bytearray(), len(payload)
    for value in ((field << 3) | 2, n):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


GOOD_SEQUENCES = pb.LogitsRequest(sequences=[pb.Sequence(token_ids=[5, 6, 7, 8], start=1)]).SerializeToString()


@dataclass(frozen=True)
class Case:
    id: str
    http: dict | bytes  # JSON body (dict) or raw body bytes
    grpc: bytes | str | None  # raw LogitsRequest bytes, DERIVE, or None (not expressible in protobuf)
    status: int  # HTTP status
    code: str | None  # gRPC status code name; None when grpc is None
    key: str | None = None  # keyed server: "valid" | "wrong" | "missing" | "malformed"


CASES = [
    Case("oov-id", _with("sequences.0.token_ids", [1, 2, 320]), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("negative-id", _with("sequences.0.token_ids", [1, -2, 3]), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("empty-sequence", _with("sequences.0.token_ids", []), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("no-sequences", _with("sequences", []), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("start-0", _with("sequences.0.start", 0), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("start-eq-len", _with("sequences.0.start", 4), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("start-gt-len", _with("sequences.0.start", 99), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("too-long", _with("sequences.0.token_ids", [5] * 257), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("k-0", _with("top_k", 0), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("k-above-max", _with("top_k", 321), DERIVE, 422, "INVALID_ARGUMENT"),  # vocab 320 < max_top_k 512
    Case("temperature-0", _with("temperature", 0.0), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("temperature-negative", _with("temperature", -1.0), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("temperature-nan", _with("temperature", float("nan")), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("temperature-inf", _with("temperature", float("inf")), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("samples-0", {**_with("samples", 0), "mode": "sample"}, DERIVE, 422, "INVALID_ARGUMENT"),
    Case("samples-above-max", {**_with("samples", 513), "mode": "sample"}, DERIVE, 422, "INVALID_ARGUMENT"),
    Case("unknown-mode", _with("mode", "beam"), DERIVE, 422, "INVALID_ARGUMENT"),
    Case("unknown-model", _with("model", "gpt-9"), DERIVE, 404, "NOT_FOUND"),
    # proto3 keeps unknown field numbers aside by design (forward compatibility): the request is served.
    Case("unknown-field", {**GOOD, "temprature": 0.5}, _proto(GOOD) + b"\xf8\x07\x01", 422, "OK"),
    Case("wrong-type-k-string", _with("top_k", "five"), None, 422, None),
    Case("wrong-type-k-bool", _with("top_k", True), None, 422, None),
    Case("wrong-type-ids-object", _with("sequences.0.token_ids", {"a": 1}), None, 422, None),
    Case("wrong-type-body-array", b"[1, 2, 3]", None, 422, None),
    Case("not-json", b'{"model": "tiny", "sequences": [', b"\x12\x03\x0a\x01", 422, "INVALID_ARGUMENT"),
    Case("empty-body", b"", None, 422, None),
    Case("invalid-utf8",
         b'{"model": "ti\xffny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}',
         _length_delimited(1, b"ti\xffny") + GOOD_SEQUENCES, 422, "INVALID_ARGUMENT"),  # fmt: skip
    Case("body-10mb",
         b'{"model": "tiny", "sequences": [{"token_ids": [' + b"1, " * (TEN_MB // 3) + b'1], "start": 1}]}',
         _proto(GOOD) + _length_delimited(100, bytes(TEN_MB)), 413, "RESOURCE_EXHAUSTED"),  # fmt: skip
    Case("valid-key", GOOD, DERIVE, 200, "OK", key="valid"),
    Case("missing-key", GOOD, DERIVE, 401, "UNAUTHENTICATED", key="missing"),
    Case("wrong-key", GOOD, DERIVE, 401, "UNAUTHENTICATED", key="wrong"),
    Case("malformed-authorization", GOOD, DERIVE, 401, "UNAUTHENTICATED", key="malformed"),
]


def _authorization(case: Case, keyed) -> str | None:
    """The Authorization header value the case sends (None: no header)."""
    return {
        None: None,
        "missing": None,
        "valid": f"Bearer {keyed.keys.first}" if keyed else None,
        "wrong": f"Bearer {keyed.keys.near_miss()}" if keyed else None,
        "malformed": f"Token {keyed.keys.first}" if keyed else None,  # the right key, the wrong scheme
    }[case.key]


def _post(server, case: Case, authorization: str | None) -> httpx.Response:
    content = case.http if isinstance(case.http, bytes) else json.dumps(case.http).encode()  # NaN/inf allowed
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    return httpx.post(server.http_url + "/v1/logits", content=content, headers=headers, timeout=60)


def _call_grpc(server, case: Case, authorization: str | None) -> Outcome:
    payload = _proto(case.http) if case.grpc == DERIVE else case.grpc
    metadata = (("authorization", authorization),) if authorization else None
    with grpc.insecure_channel(server.grpc_target) as channel:
        return raw_unary(channel, GET_LOGITS, payload, metadata=metadata)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_matrix(case: Case, request: pytest.FixtureRequest) -> None:
    keyed = request.getfixturevalue("keyed_server") if case.key else None
    server = keyed.server if keyed else request.getfixturevalue("tiny_server")
    authorization = _authorization(case, keyed)

    response = _post(server, case, authorization)
    assert response.status_code == case.status, response.text[:500]
    if case.status >= 400:
        assert response.json()["error"]["code"] == CODE_OF_STATUS[case.status], response.text[:500]
    if case.grpc is not None:
        outcome = _call_grpc(server, case, authorization)
        assert outcome.code == case.code, outcome.details


def test_keyed_server_answers_grpc_with_a_valid_key_through_the_typed_stub(keyed_server) -> None:
    """The matrix sends raw bytes; a regular client passes the key as `authorization` metadata."""
    from dualdistill.protocol.v1 import teacher_pb2_grpc

    with grpc.insecure_channel(keyed_server.server.grpc_target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        request = json_format.ParseDict(GOOD, pb.LogitsRequest())
        reply = stub.GetLogits(request, timeout=60, metadata=grpc_bearer(keyed_server.keys.first))
    assert len(reply.results[0].row_lengths) == 3
