"""/openapi.json describes the server as it behaves (issue 18, item 3): statuses, error body, media types,
JSON Schema bounds, the bearer scheme when keys are on, and the limits the core enforces."""

from __future__ import annotations

import json

import httpx
import numpy as np

from dualdistill.protocol.params import MIN_TEMPERATURE_FLOAT32

DATA_STATUSES = {"200", "404", "413", "422", "429", "500", "503", "504"}


def _document(server) -> dict:
    response = httpx.get(server.http_url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | set().union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node)) if node else set()
    return set()


def test_the_document_names_every_status_and_the_real_error_body(tiny_server) -> None:
    document = _document(tiny_server)
    paths = document["paths"]
    for path in ("/v1/logits", "/v1/generate"):
        operation = paths[path]["post"]
        assert DATA_STATUSES <= set(operation["responses"]), (path, sorted(operation["responses"]))
        assert operation["requestBody"]["required"]
        error = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert not {"gt", "ge", "lt", "le"} & _keys(document), "pydantic keywords instead of JSON Schema"
    assert "securitySchemes" not in document["components"]  # no keys configured on this server


def test_the_document_states_the_enforced_limits(tiny_server) -> None:
    schemas = _document(tiny_server)["components"]["schemas"]
    logits = schemas["LogitsRequest"]
    assert logits["properties"]["temperature"]["minimum"] == MIN_TEMPERATURE_FLOAT32 == float(np.float32(1e-4))
    assert logits["properties"]["model"]["enum"] == ["tiny"]
    assert logits["else"]["properties"]["top_k"]["maximum"] == 320  # min(max_top_k 512, vocab 320)
    ids = schemas["SequenceIn"]["properties"]["token_ids"]
    assert ids["items"]["type"] == "integer" and ids["items"]["maximum"] == 319 and ids["maxItems"] == 256
    assert len(schemas["PromptIn"]["oneOf"]) == 3  # exactly one of text, token_ids, messages


def test_with_keys_the_document_has_a_bearer_scheme_and_401(keyed_server) -> None:
    document = _document(keyed_server.server)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path in ("/v1/logits", "/v1/generate", "/v1/models", "/v1/completions", "/get_sequence_logprobs/"):
        operation = next(iter(document["paths"][path].values()))
        assert operation["security"] == [{"bearer": []}] and "401" in operation["responses"], path
    assert "security" not in document["paths"]["/healthz"]["get"]
    json.dumps(document)


def test_the_compatible_endpoints_are_documented_as_they_answer(tiny_server) -> None:
    document = _document(tiny_server)
    schemas = document["components"]["schemas"]
    for path in ("/v1/completions", "/get_sequence_logprobs/"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "413", "429", "500", "503", "504"} <= set(responses), (path, sorted(responses))
        assert "422" not in responses  # vLLM answers invalid requests with 400
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VllmError"}
    assert schemas["VllmError"]["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    for probe in ("/health", "/health/", "/readyz"):
        assert "503" in document["paths"][probe]["get"]["responses"], probe
    completion = schemas["CompletionRequest"]
    assert completion["required"] == ["prompt"]
    assert completion["properties"]["n"]["maximum"] == 64
    assert completion["properties"]["top_k"]["enum"] == [None, 0, -1]  # not implemented: no-op values only
    assert completion["properties"]["min_p"]["enum"] == [None, 0]  # 0 and 0.0 are one JSON value
    sequences = schemas["SequenceLogprobsRequest"]["properties"]
    assert sequences["sequences"]["items"]["items"]["maximum"] == 319
    assert sequences["response_format"]["enum"] == ["json", "binary"]
