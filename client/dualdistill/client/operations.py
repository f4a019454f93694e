"""Request building and response parsing, written once for all four clients (sync/async x HTTP/gRPC).

An `Operation` is a transport-free description of one call: the JSON body (whose field names are the
proto's, so the same dict also becomes the gRPC request message), where it goes on each transport, and
how each transport's answer turns into the result. Transports only move bytes and map failures
(errors.py); clients only add retries.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Generic, TypeVar

import numpy as np
from google.protobuf import json_format

from dualdistill.client.types import Completion, ModelInfo
from dualdistill.protocol.formats import LOGITS_FORMATS as FORMATS
from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.v1 import teacher_pb2 as pb

T = TypeVar("T")


@dataclass(frozen=True)
class Operation(Generic[T]):
    rpc: str  # gRPC method of service dualdistill.v1.Teacher
    http_method: str  # "GET" | "POST"
    http_path: str  # e.g. "/v1/logits"
    body: dict[str, Any] | None  # JSON body (POST only)
    to_proto: Callable[[], Any]  # builds the gRPC request message
    from_json: Callable[[dict[str, Any]], T]  # parses an HTTP JSON answer
    from_binary: Callable[[bytes], T] | None  # parses an HTTP binary answer (logits only)
    from_proto: Callable[[Any], T]  # parses a gRPC answer
    request_id: str  # the same for every attempt, so the server's logs tie retries together


def _ids(values: Any) -> list[int]:
    """Token ids as plain ints from a list, tuple, numpy array or torch tensor."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [int(v) for v in values]


def _proto_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# ---- models ---------------------------------------------------------------------------------------------


def list_models() -> Operation[list[ModelInfo]]:
    return Operation(
        rpc="ListModels",
        http_method="GET",
        http_path="/v1/models",
        body=None,
        to_proto=pb.ListModelsRequest,
        from_json=_models_from_json,
        from_binary=None,
        from_proto=lambda response: [ModelInfo.from_dict(_proto_dict(item)) for item in response.models],
        request_id=uuid.uuid4().hex,
    )


def _models_from_json(data: dict[str, Any]) -> list[ModelInfo]:
    if "models" not in data and data.get("object") == "list":  # an OpenAI-compatible server, not ours
        from dualdistill.client.errors import TeacherServiceError

        raise TeacherServiceError(
            "UNIMPLEMENTED",
            "this URL serves the OpenAI API (a vLLM server?), not a dualdistill teacher; use "
            "openai+http://HOST:PORT to use it as the teacher",
        )
    return [ModelInfo.from_dict(item) for item in data["models"]]


# ---- logits ---------------------------------------------------------------------------------------------


def logits(
    model: str,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    params: LogitsParams,
    *,
    format: str,
    deadline_seconds: float | None,
) -> Operation[list[SequenceLogits]]:
    """POST /v1/logits | Teacher.GetLogits. `params` carries the static bounds; the server checks the
    ones that depend on the model (top_k <= max_top_k, samples <= max_samples)."""
    if len(sequences) != len(starts):
        raise ValueError(
            f"got {len(sequences)} sequences but {len(starts)} starts; pass one start per sequence"
        )
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    request_id = uuid.uuid4().hex
    seqs = [
        {"token_ids": _ids(ids), "start": int(start)} for ids, start in zip(sequences, starts, strict=True)
    ]
    body: dict[str, Any] = {
        "model": model,
        "sequences": seqs,
        **params.to_dict(),
        "format": format,
        "request_id": request_id,
    }
    if deadline_seconds is not None:
        body["deadline_seconds"] = float(deadline_seconds)

    def to_proto() -> pb.LogitsRequest:
        # Built field by field: json_format.ParseDict walks every token id in Python.
        fields = {key: value for key, value in body.items() if key != "sequences"}
        return pb.LogitsRequest(
            sequences=[pb.Sequence(token_ids=s["token_ids"], start=s["start"]) for s in seqs], **fields
        )

    return Operation(
        rpc="GetLogits",
        http_method="POST",
        http_path="/v1/logits",
        body=body,
        to_proto=to_proto,
        from_json=lambda data: [_results_from_json(item) for item in data["results"]],
        from_binary=_decode_payload,
        from_proto=_results_from_proto,
        request_id=request_id,
    )


def _decode_payload(payload: bytes) -> list[SequenceLogits]:
    from dualdistill.protocol import (
        wire,  # the codec; imported late so a JSON-only client does not need zstandard
    )

    return list(wire.decode(payload))


def _floats(values: Any) -> np.ndarray:
    """float32 array from JSON numbers; JSON null (a non-finite value, in practice -inf) becomes -inf."""
    return np.array([-math.inf if v is None else v for v in values], dtype=np.float32)


def _results_from_json(item: dict[str, Any]) -> SequenceLogits:
    """One JSON result (rows as nested lists) -> SequenceLogits (flat ragged)."""
    rows = item["top_ids"]
    counts = item.get("counts")
    return SequenceLogits(
        row_lengths=np.array([len(row) for row in rows], dtype=np.int32),
        top_ids=np.fromiter(chain.from_iterable(rows), dtype=np.int32),
        top_logprobs=_floats(chain.from_iterable(item["top_logprobs"])),
        token_logprobs=_floats(item["token_logprobs"]),
        tail_logprobs=_floats(item["tail_logprobs"]),
        counts=None if counts is None else np.fromiter(chain.from_iterable(counts), dtype=np.int32),
    )


def _results_from_proto(response: pb.LogitsResponse) -> list[SequenceLogits]:
    if response.payload:
        return _decode_payload(response.payload)
    return [
        SequenceLogits(
            row_lengths=np.array(r.row_lengths, dtype=np.int32),
            top_ids=np.array(r.top_ids, dtype=np.int32),
            top_logprobs=np.array(r.top_logprobs, dtype=np.float32),
            token_logprobs=np.array(r.token_logprobs, dtype=np.float32),
            tail_logprobs=np.array(r.tail_logprobs, dtype=np.float32),
            counts=np.array(r.counts, dtype=np.int32) if len(r.counts) else None,
        )
        for r in response.results
    ]


# ---- generate -------------------------------------------------------------------------------------------

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


def prompt_body(prompt: Any) -> dict[str, Any]:
    """One prompt -> its JSON form: text, token ids, or chat messages (the server applies the template)."""
    if isinstance(prompt, str):
        return {"text": prompt}
    if isinstance(prompt, dict) and set(prompt) <= {"text", "token_ids", "messages"}:
        return dict(prompt)  # already in wire form
    items = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)
    if items and all(isinstance(m, dict) for m in items):
        return {"messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in items]}
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return {"token_ids": [int(t) for t in items]}
    raise TypeError(
        "a prompt must be a str, a list of token ids, or a list of chat messages {'role', 'content'}; "
        f"got {type(prompt).__name__} of {[type(x).__name__ for x in items[:3]]}"
    )


def generate(
    model: str,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    n: int,
    seed: int,
) -> Operation[list[Completion]]:
    """POST /v1/generate | Teacher.Generate."""
    if isinstance(prompts, str | dict):
        raise TypeError("prompts must be a list of prompts; wrap a single prompt as [prompt]")
    request_id = uuid.uuid4().hex
    body = {
        "model": model,
        "prompts": [prompt_body(p) for p in prompts],
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "n": int(n),
        "seed": int(seed),
        "request_id": request_id,
    }
    return Operation(
        rpc="Generate",
        http_method="POST",
        http_path="/v1/generate",
        body=body,
        to_proto=lambda: json_format.ParseDict(body, pb.GenerateRequest()),
        from_json=lambda data: [Completion.from_dict(item) for item in data["completions"]],
        from_binary=None,
        from_proto=lambda response: [Completion.from_dict(_proto_dict(c)) for c in response.completions],
        request_id=request_id,
    )
