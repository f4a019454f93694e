"""Protobuf <-> the core's types. Requests become the SAME pydantic models the HTTP transport uses, so both
transports validate identically and name bad fields identically.

A request's shape (sequence lengths, token total, generation budget) is checked on the protobuf message
itself, where every length is O(1), before anything is converted; a large request is then converted in a
worker thread, so one big message never holds the event loop (and every other tenant) for seconds.
"""

from __future__ import annotations

import asyncio

from google.protobuf.descriptor import FieldDescriptor

from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.v1 import teacher_pb2 as pb

from ..config import ServerConfig
from ..core import GenerateResult, LogitsResult
from ..core.payload import binary_payload
from ..core.validation import check_request_tokens, check_sequence_length, generate_budget_of
from ..schemas import GenerateRequest, LogitsRequest

INLINE_TOKENS = 16_384  # requests with fewer ids are converted on the loop (well under a millisecond)


def _as_dict(message) -> dict:
    """The message as the JSON-shaped dict its pydantic model validates (MessageToDict's field names).

    Non-optional scalars are present even at their zero value (start 0 must be refused as "start >= 1",
    not reported missing); optional fields left unset stay absent, so the pydantic defaults apply.
    Repeated scalars become lists in one C call (MessageToDict walks them in Python: 1.2 s for 4M ids)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if field.is_repeated:
            value = getattr(message, name)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                out[name] = [_as_dict(item) for item in value]
            else:
                out[name] = list(value)
        elif field.has_presence and not message.HasField(name):
            continue
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            out[name] = _as_dict(getattr(message, name))
        else:
            out[name] = getattr(message, name)
    return out


def _logits_tokens(message: pb.LogitsRequest, config: ServerConfig) -> int:
    for i, sequence in enumerate(message.sequences):
        check_sequence_length(len(sequence.token_ids), config.max_seq_len, f"sequences[{i}].token_ids")
    total = sum(len(sequence.token_ids) for sequence in message.sequences)
    check_request_tokens(total, config)
    return total


async def logits_request(message: pb.LogitsRequest, config: ServerConfig) -> LogitsRequest:
    if _logits_tokens(message, config) <= INLINE_TOKENS:
        return LogitsRequest.model_validate(_as_dict(message))
    return await asyncio.to_thread(lambda: LogitsRequest.model_validate(_as_dict(message)))


async def generate_request(message: pb.GenerateRequest, config: ServerConfig) -> GenerateRequest:
    prompts = len(message.prompts)
    n = message.n if message.HasField("n") else 1
    max_new = message.max_new_tokens if message.HasField("max_new_tokens") else 64
    if n >= 1 and max_new >= 1:  # other values get the schema's own message
        generate_budget_of(prompts, n, max_new, config)
    tokens = 0
    for i, prompt in enumerate(message.prompts):
        check_sequence_length(len(prompt.token_ids), config.max_seq_len, f"prompts[{i}].token_ids")
        tokens += len(prompt.token_ids) + len(prompt.messages) + len(prompt.text) // 4
    if tokens <= INLINE_TOKENS:
        return GenerateRequest.model_validate(_as_dict(message))
    return await asyncio.to_thread(lambda: GenerateRequest.model_validate(_as_dict(message)))


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
