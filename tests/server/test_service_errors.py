"""errors.py: the one table from error types to HTTP statuses and gRPC codes, and field paths."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pydantic import ValidationError

from dualdistill_server.context import clean_request_id
from dualdistill_server.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ModelNotFound,
    PayloadTooLarge,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    code_name_for_http_status,
    field_path,
    to_service_error,
)
from dualdistill_server.schemas import LogitsRequest


@pytest.mark.parametrize(
    ("error", "http", "code", "retry_after"),
    [
        (InvalidArgument, 422, grpc.StatusCode.INVALID_ARGUMENT, None),
        (ModelNotFound, 404, grpc.StatusCode.NOT_FOUND, None),
        (Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED, None),
        (ResourceExhausted, 429, grpc.StatusCode.RESOURCE_EXHAUSTED, 1),
        (PayloadTooLarge, 413, grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        (Unavailable, 503, grpc.StatusCode.UNAVAILABLE, 1),
        (DeadlineExceeded, 504, grpc.StatusCode.DEADLINE_EXCEEDED, None),
        (Cancelled, 499, grpc.StatusCode.CANCELLED, None),
        (InternalError, 500, grpc.StatusCode.INTERNAL, None),
    ],
)
def test_contract_status_table(error, http, code, retry_after) -> None:
    instance = error("what went wrong", field="top_k")
    assert (instance.http_status, instance.grpc_code, instance.retry_after_seconds) == (http, code, retry_after)
    assert instance.to_body() == {"error": {"code": code.name, "message": "top_k: what went wrong", "field": "top_k"}}
    assert code_name_for_http_status(http) == code.name


def test_field_paths_use_json_notation() -> None:
    assert field_path(("body", "sequences", 3, "token_ids", 17)) == "sequences[3].token_ids[17]"
    assert field_path(("top_k",)) == "top_k"
    assert field_path(()) is None


def test_validation_error_names_the_first_field_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as raised:
        LogitsRequest.model_validate({"model": "m", "sequences": [{"token_ids": [1, 2], "start": 0}], "top_k": 0})
    error = to_service_error(raised.value)
    assert isinstance(error, InvalidArgument) and error.field == "sequences[0].start"
    assert "1 more" in error.message


def test_unknown_errors_become_internal_without_details() -> None:
    error = to_service_error(KeyError("/etc/secret-path"), request_id="abc")
    assert isinstance(error, InternalError)
    assert "abc" in error.message and "secret" not in error.message
    assert isinstance(to_service_error(asyncio.TimeoutError()), DeadlineExceeded)


def test_client_request_ids_are_kept_only_when_header_safe() -> None:
    assert clean_request_id("run-7/step:12") == "run-7/step:12"
    for bad in ("", "has space", "new\nline", "x" * 129, "é"):
        assert clean_request_id(bad) != bad and len(clean_request_id(bad)) == 32
