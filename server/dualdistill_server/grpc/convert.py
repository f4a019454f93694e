"""Protobuf <-> the core's types. Requests go through MessageToDict into the SAME pydantic models the HTTP
transport uses, so both transports validate identically and name bad fields identically."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.v1 import teacher_pb2 as pb

from ..core import GenerateResult, LogitsResult
from ..core.payload import binary_payload
from ..schemas import GenerateRequest, LogitsRequest


def _as_dict(message) -> dict:
    # Non-optional scalars are printed even at their zero value (start 0 must be refused as "start >= 1",
    # not reported missing); optional fields left unset stay absent, so the pydantic defaults apply.
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def logits_request(message: pb.LogitsRequest) -> LogitsRequest:
    return LogitsRequest.model_validate(_as_dict(message))


def generate_request(message: pb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest.model_validate(_as_dict(message))


def sequence_result(result: SequenceLogits) -> pb.SequenceResult:
    message = pb.SequenceResult(
        row_lengths=result.row_lengths.tolist(),
        top_ids=result.top_ids.tolist(),
        top_logprobs=result.top_logprobs.tolist(),
        token_logprobs=result.token_logprobs.tolist(),
        tail_logprobs=result.tail_logprobs.tolist(),
    )
    if result.counts is not None:
        message.counts.extend(result.counts.tolist())
    return message


def logits_response(result: LogitsResult, response_format: str) -> pb.LogitsResponse:
    """format "json" -> structured `results`; "binary" / "binary-lossless" -> the wire codec's `payload`."""
    response = pb.LogitsResponse(model=result.model, fingerprint=result.fingerprint, request_id=result.request_id)
    if response_format == "json":
        response.results.extend(sequence_result(r) for r in result.results)
    else:
        response.payload = binary_payload(result, response_format)
    return response


def model_info(info) -> pb.ModelInfo:
    return pb.ModelInfo(**{key: value for key, value in info.to_dict().items() if value is not None})


def generate_response(result: GenerateResult) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        model=result.model,
        fingerprint=result.fingerprint,
        request_id=result.request_id,
        completions=[
            pb.Completion(
                prompt_index=c.prompt_index,
                prompt_token_ids=[int(i) for i in c.prompt_token_ids],
                token_ids=[int(i) for i in c.token_ids],
                text=c.text,
                finish_reason=c.finish_reason,
            )
            for c in result.completions
        ],
    )
