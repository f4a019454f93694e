"""/openapi.json as the server behaves: bodies, every status a route answers, the real error body, the
bearer scheme when keys are configured, and the limits of the served models.

FastAPI's generated document described FastAPI's defaults, not this server: a `{"detail": [...]}` 422
body, no 401/404/413/429/503/504, /metrics as JSON, pydantic's `"gt"` keywords (not JSON Schema) and
none of the limits the core enforces. The document is built once the models are loaded (before that
it has no model limits and is not cached).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dualdistill.protocol.formats import BINARY_CONTENT_TYPE
from dualdistill.protocol.params import MIN_TEMPERATURE_FLOAT32

from ..core import TeacherService
from ..schemas import GenerateRequest, LogitsRequest
from .openapi_compat import COMPAT_OPERATIONS, describe_compat, vllm_error_responses

_BOUND_KEYWORDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_STATUS_TEXT = {
    401: "Missing or wrong API key (`WWW-Authenticate: Bearer`)",
    404: "Unknown model (or route)",
    413: "Body over max_body_bytes",
    422: "Invalid request; `error.field` names the first bad value",
    429: "Queue full or the tenant over its limits; retry after `Retry-After` seconds",
    500: "Unexpected server error; the message carries the request id only",
    503: "Models loading or the server draining; retry after `Retry-After` seconds",
    504: "The request's deadline passed",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "gRPC status code name, e.g. INVALID_ARGUMENT"},
                "message": {"type": "string", "minLength": 1},
                "field": {"type": ["string", "null"], "description": "JSON path of the bad value"},
            },
        }
    },
}


def json_schema_bounds(node: Any) -> Any:
    """pydantic writes constraints inside a union as `gt`/`ge`/...: rename them to JSON Schema's."""
    if isinstance(node, dict):
        return {_BOUND_KEYWORDS.get(key, key): json_schema_bounds(value) for key, value in node.items()}
    if isinstance(node, list):
        return [json_schema_bounds(item) for item in node]
    return node


def _model_schemas(schemas: dict) -> None:
    for model in (LogitsRequest, GenerateRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
    schemas["Error"] = ERROR_SCHEMA


def _served_limits(schemas: dict, service: TeacherService) -> None:
    """The limits core/validation.py checks against the served models, where JSON Schema can say them."""
    infos = service.list_models()
    if not infos:
        return
    names = sorted(info.name for info in infos)
    max_top_k = min(info.max_top_k for info in infos)
    max_seq_len = min(info.max_seq_len for info in infos)
    max_id = min(info.vocab_size for info in infos) - 1
    logits, generate = schemas["LogitsRequest"], schemas["GenerateRequest"]
    for request in (logits, generate):
        request["properties"]["model"]["enum"] = names
    # top_k is checked in topk mode only, samples in sample mode only (an unused default never fails).
    logits["if"] = {"properties": {"mode": {"const": "sample"}}, "required": ["mode"]}
    logits["then"] = {"properties": {"samples": {"maximum": service.config.max_samples}}}
    logits["else"] = {"properties": {"top_k": {"maximum": max_top_k}}}
    sequence = schemas["SequenceIn"]["properties"]["token_ids"]
    sequence["maxItems"] = max_seq_len
    schemas["SequenceIn"]["properties"]["start"]["maximum"] = max_seq_len - 1  # and < len(token_ids)
    generate["properties"]["max_new_tokens"]["maximum"] = service.config.max_generate_tokens  # x prompts x n
    sequence["items"]["maximum"] = max_id
    for prompt_ids in schemas["PromptIn"]["properties"]["token_ids"]["anyOf"]:
        if prompt_ids.get("type") == "array":
            prompt_ids["maxItems"] = max_seq_len - 1
            prompt_ids["items"]["maximum"] = max_id
    # 0 (greedy) or at least MIN_TEMPERATURE (as float32); the gap between is refused.
    temperature = generate["properties"]["temperature"]
    generate["properties"]["temperature"] = {
        "anyOf": [{"const": 0}, {**temperature, "minimum": MIN_TEMPERATURE_FLOAT32}],
        "default": temperature.get("default"), "description": temperature.get("description"),
    }


def _exactly_one_prompt_field(schemas: dict) -> None:
    empty = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    branches = []
    for name in ("text", "token_ids", "messages"):
        others = {other: empty for other in ("text", "token_ids", "messages") if other != name}
        given = {"type": "string", "minLength": 1} if name == "text" else {"type": "array", "minItems": 1}
        branches.append({"required": [name], "properties": {name: given, **others}})
    schemas["PromptIn"]["oneOf"] = branches


def _responses(statuses: tuple[int, ...]) -> dict:
    return {str(status): {"description": _STATUS_TEXT[status],
                          "content": {"application/json": {"schema": _ERROR_REF}}} for status in statuses}


def build_openapi(app: FastAPI, service: TeacherService) -> dict:
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _model_schemas(schemas)
    _exactly_one_prompt_field(schemas)
    _served_limits(schemas, service)
    describe_compat(schemas, service)
    keyed = service.api_keys.enabled
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "Authorization: Bearer KEY (per tenant)"}}
    paths = document["paths"]
    data_errors = (401, 404, 413, 422, 429, 500, 503, 504) if keyed else (404, 413, 422, 429, 500, 503, 504)
    for path, operations in paths.items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path in COMPAT_OPERATIONS:  # vLLM's error body and statuses
                responses.update(vllm_error_responses(keyed))
                if keyed:
                    operation["security"] = [{"bearer": []}]
            elif path.startswith("/v1/"):
                responses.update(_responses(data_errors if path != "/v1/models" else
                                            ((401,) if keyed else ()) + (500,)))
                if keyed:
                    operation["security"] = [{"bearer": []}]
            else:
                responses.update(_responses((500,)))
    for path, model in (("/v1/logits", LogitsRequest), ("/v1/generate", GenerateRequest)):
        paths[path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    paths["/v1/logits"]["post"]["responses"]["200"]["content"] = {
        "application/json": {"schema": {"type": "object"}},
        BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
    }
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    for probe in ("/readyz", "/health", "/health/"):
        if probe in paths:
            paths[probe]["get"]["responses"].update({"503": {
                "description": "Loading or draining",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {
                    "type": "string", "enum": ["loading", "draining"]}}}}}}})
    return json_schema_bounds(document)


def install_openapi(app: FastAPI, service: TeacherService) -> None:
    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build_openapi(app, service)
        if service.list_models():
            app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
