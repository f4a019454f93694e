"""Security promises beyond the basic key check: no spelling of a path reaches a data route without a
key, an unauthenticated client learns nothing about validation, and keys never leak (logs at debug
level, /metrics, response bodies and headers, gRPC details and metadata).

Proven elsewhere (docs/reliability.md has the table): data routes need a key and probes stay open on
both transports (tests/server/test_tenants.py), 401 / UNAUTHENTICATED rows of the bad-input matrix
(test_bad_inputs.py), size limits (test_bad_inputs.py; the chunked upload in
tests/server/test_service_http.py), no unsafe deserialization (test_static_safety.py), non-root image
(tests/deploy/test_dockerfile.py::test_user_is_not_root).
"""

from __future__ import annotations

import grpc
import httpx
import pytest

from dualdistill.protocol.v1 import teacher_pb2 as pb
from tests.reliability.support import UNARY_METHODS, raw_stream, server_output

LOGITS = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
GENERATE = {"model": "tiny", "prompts": [{"token_ids": [5, 6, 7]}], "max_new_tokens": 2}
DATA_ROUTES = [("GET", "/v1/models", None), ("POST", "/v1/logits", LOGITS), ("POST", "/v1/generate", GENERATE)]
GRPC_BODIES = {
    "ListModels": pb.ListModelsRequest().SerializeToString(),
    "GetLogits": pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[5, 6, 7], start=1)]).SerializeToString(),
    "Generate": pb.GenerateRequest(model="tiny", prompts=[pb.Prompt(token_ids=[5, 6])], max_new_tokens=2).SerializeToString(),
}  # fmt: skip


def _http(server, method: str, path: str, body, headers=None) -> httpx.Response:
    return httpx.request(method, server.http_url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "path", ["/v1/logits", "//v1/logits", "/v1//logits", "/v1/logits/", "/%76%31/logits", "/v1/./logits",
             "/V1/logits", "/v1/logits?x=1", "/v1/logits%00"],
)  # fmt: skip
def test_no_path_spelling_reaches_a_data_route_without_a_key(keyed_server, path) -> None:
    response = httpx.post(keyed_server.server.http_url + path, json=LOGITS, timeout=30)
    assert response.status_code != 200 and response.status_code < 500, (path, response.status_code, response.text)


def test_unauthenticated_requests_learn_nothing_about_validation(keyed_server) -> None:
    """A bad body without a key is a 401, not a 422 describing what the server expects."""
    url = keyed_server.server.http_url + "/v1/logits"
    for content in (b'{"model": "tiny", "sequences": [', b'{"model": "nope", "sequences": []}'):
        response = httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 401, response.text


def test_keys_never_appear_in_logs_metrics_or_error_messages(keyed_server) -> None:
    server, keys = keyed_server.server, keyed_server.keys
    wrong = keys.near_miss()
    seen: list[str] = []  # every byte a client got back
    presented = [f"Bearer {keys.first}", f"Bearer {wrong}", f"Token {keys.first}", keys.first, f"Bearer  {wrong}"]
    bad_logits = {**LOGITS, "top_k": 0}  # a 422 with a valid key: its message must not echo the header
    for authorization in presented:
        for method, path, body in [*DATA_ROUTES, ("POST", "/v1/logits", bad_logits)]:
            response = _http(server, method, path, body, {"authorization": authorization})
            seen += [response.text, str(response.headers)]
    with grpc.insecure_channel(server.grpc_target) as channel:
        for authorization in presented:
            for method in UNARY_METHODS:
                call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
                body = GRPC_BODIES[method.rsplit("/", 1)[1]]
                try:
                    call.with_call(body, timeout=30, metadata=(("authorization", authorization),))
                except grpc.RpcError as error:
                    seen += [error.details() or "", str(error.trailing_metadata()), str(error.initial_metadata())]
        outcome = raw_stream(channel, [GRPC_BODIES["GetLogits"]], (("authorization", f"Bearer {wrong}"),))
        seen.append(outcome.details)
    metrics = httpx.get(server.http_url + "/metrics", timeout=30).text
    output = server_output(server)

    assert "/v1/logits" in output and "GetLogits" in output, "the log must record these requests"
    assert any("UNAUTHENTICATED" in text for text in seen), "the wrong keys must have been refused"
    for secret in [*keys.keys.values(), wrong]:
        for fragment in (secret, secret[-16:]):  # whole, or the random part alone
            assert fragment not in output, "an API key reached the server's log"
            assert fragment not in metrics, "an API key reached /metrics"
            assert not [text for text in seen if fragment in text], "an API key was echoed to a client"
