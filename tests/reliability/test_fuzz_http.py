"""Schema-driven fuzzing of the HTTP API (Triton's L0_http_fuzz shape) with schemathesis.

The schema is the one the server itself serves at /openapi.json. Cases come from schemathesis's
positive (schema-valid) and negative (schema-violating: wrong types, missing fields, out-of-range
values, bodies that are not JSON at all) generators; in half of the JSON bodies the model name is set
to the served one, so the cases also reach the model-dependent checks and the forward pass.

Every case must get a response below 500 within the timeout (no 5xx, no hang); every error response
must carry the contract's error body and an x-request-id; the server must serve normally afterwards.
"""

from __future__ import annotations

import collections
import json

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_MODEL_NAME

TIMEOUT = 60.0  # seconds per case: a hang, not a slow forward, is what trips it
DATA_OPERATIONS = ("POST /v1/logits", "POST /v1/generate")
VLLM_DIALECT_OPERATIONS = ("POST /v1/completions", "POST /get_sequence_logprobs/")


def _operations(server) -> dict:
    schema = schemathesis.openapi.from_url(server.http_url + "/openapi.json")
    operations = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations[f"{operation.method.upper()} {operation.path}"] = operation
    return operations


def _check_response(label: str, body, response: requests.Response) -> None:
    # the answer as bytes: a binary 200 (format "binary") is not text
    context = f"{label} {str(body)[:300]!r} -> {response.status_code} {response.content[:300]!r}"
    # 504 is the contract's answer to a deadline the request itself set (deadline_seconds: 5e-324).
    deadline = isinstance(body, dict) and body.get("deadline_seconds") is not None
    assert response.status_code < 500 or (response.status_code == 504 and deadline), context
    assert response.headers.get("x-request-id"), context
    if response.status_code >= 400:
        error = response.json()["error"]
        if label in VLLM_DIALECT_OPERATIONS:  # vLLM's error body on the compatible dialects
            assert list(error) == ["message", "type", "param", "code"] and error["code"] == response.status_code
            assert error["message"], context
            return
        assert set(error) == {"code", "message", "field"} and error["code"] and error["message"], context


def _fuzz_operation(
    server, label: str, operation, examples: int, seen: collections.Counter, session, derandomize: bool
) -> None:
    modes = [schemathesis.GenerationMode.POSITIVE]
    if label in DATA_OPERATIONS + VLLM_DIALECT_OPERATIONS:
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              derandomize=derandomize, suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=strategy, served=st.booleans())
    def run(case, served: bool) -> None:
        if served and isinstance(case.body, dict):
            case.body["model"] = TINY_MODEL_NAME
        response = case.call(base_url=server.http_url, session=session, timeout=TIMEOUT)
        seen[(label, response.status_code)] += 1
        _check_response(label, case.body, response)

    run()


def fuzz(server, examples_per_operation: int, derandomize: bool) -> collections.Counter:
    """Run the generated cases against `server`; returns {(operation, status): count}. `derandomize`:
    the same cases every run (the fast suite); otherwise new ones each time (the long run explores)."""
    operations = _operations(server)
    assert set(DATA_OPERATIONS) <= set(operations), sorted(operations)
    seen: collections.Counter = collections.Counter()
    session = requests.Session()
    for label, operation in operations.items():
        examples = examples_per_operation if label in DATA_OPERATIONS else 5
        examples = examples_per_operation // 2 if label in VLLM_DIALECT_OPERATIONS else examples
        _fuzz_operation(server, label, operation, examples, seen, session, derandomize)
    return seen


def _assert_serves(server) -> None:
    assert httpx.get(server.http_url + "/readyz", timeout=30).status_code == 200, server.log_tail()
    body = {"model": TINY_MODEL_NAME, "sequences": [{"token_ids": [5, 6, 7, 8], "start": 1}]}
    response = httpx.post(server.http_url + "/v1/logits", json=body, timeout=60)
    assert response.status_code == 200 and len(response.json()["results"][0]["top_ids"]) == 3


def test_schema_fuzz_smoke(tiny_server) -> None:
    """About 100 generated cases over the data endpoints (and the probes)."""
    seen = fuzz(tiny_server, examples_per_operation=50, derandomize=True)
    data_cases = sum(count for (label, _), count in seen.items() if label in DATA_OPERATIONS)
    assert data_cases >= 90, seen
    assert any(status == 422 for _, status in seen), seen  # the negative cases did reach validation
    print(json.dumps({f"{label} {status}": n for (label, status), n in sorted(seen.items())}))
    _assert_serves(tiny_server)


@pytest.mark.slow
def test_schema_fuzz_thousand_cases(tiny_server) -> None:
    seen = fuzz(tiny_server, examples_per_operation=600, derandomize=False)
    data_cases = sum(count for (label, _), count in seen.items() if label in DATA_OPERATIONS)
    assert data_cases >= 1000, seen
    assert any(status == 200 for (label, status) in seen if label in DATA_OPERATIONS), seen
    print(json.dumps({f"{label} {status}": n for (label, status), n in sorted(seen.items())}))
    _assert_serves(tiny_server)
