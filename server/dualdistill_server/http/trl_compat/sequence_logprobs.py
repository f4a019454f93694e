"""`POST /get_sequence_logprobs/` as `trl vllm-serve` answers it (trl/scripts/vllm_serve.py).

Request: {"sequences": [[ids]], "prompt_lengths": [P_b], "top_logprobs": K, "temperature": T,
"response_format": "json" | "binary"}; unknown fields ignored, as TRL's pydantic model ignores them.
For sequence b, completion position t = 0 .. C_b - 1 (C_b = len(sequences[b]) - P_b) is the teacher's
distribution over sequences[b][P_b + t] given the tokens before it; position 0 of a sequence has none
(vLLM's prompt_logprobs start at token 1), so with P_b = 0 that row stays empty.

"binary" (TRL's default client): a compact JSON object in this key order, arrays C-order base64:
    logprobs_b64          float32 (B, Cmax, K)  top-K logprobs by rank, -inf padding
    token_ids_b64         int32   (B, Cmax, K)  their ids, 0 padding
    actual_logprobs_b64   float32 (B, Cmax, 1)  logprob of the realised token (-inf padding)
    actual_token_ids_b64  int32   (B, Cmax, 1)  the realised token (0 padding)
    shape                 [B, Cmax, K];  completion_lengths  [C_b]
"json": {"logprobs": [[[...]]], "logprob_token_ids": [[[...]]]}, per position the vLLM entry sorted by rank
(top-K, then the realised token when it is outside them), [] for a position without an entry.

Temperature: TRL hands it to vLLM, whose prompt logprobs ignore it; so does this endpoint unless the server
runs with `compat_apply_temperature`.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
from pydantic import BaseModel, ConfigDict

from ...core import TeacherService
from ...errors import InvalidArgument
from ...schemas import Float, Int, LogitsRequest, TokenIds
from ..openai_compat.completions import check_logprobs_caps, resolve_model


class SequenceLogprobsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sequences: list[TokenIds]
    prompt_lengths: list[Int]
    top_logprobs: Int = 100
    temperature: Float = 1.0
    response_format: str = "json"
    model: str | None = None  # ours (TRL's server serves one model): default the first served model


def _check(body: SequenceLogprobsRequest, max_seq_len: int) -> None:
    """TRL's checks, with its messages (TRL answers them with 500; here they are 400)."""
    if len(body.sequences) != len(body.prompt_lengths):
        raise InvalidArgument("sequences and prompt_lengths must have the same length.", field="prompt_lengths")
    for i, (sequence, prompt_length) in enumerate(zip(body.sequences, body.prompt_lengths, strict=True)):
        if prompt_length < 0 or prompt_length > len(sequence):
            raise InvalidArgument(
                f"Sequence {i} has prompt_length={prompt_length} which is out of range [0, {len(sequence)}]. "
                "prompt_length must be between 0 and the sequence length inclusive.",
                field=f"prompt_lengths[{i}]",
            )
        if len(sequence) > max_seq_len:
            raise InvalidArgument(
                f"Sequence {i} has length {len(sequence)} which exceeds max_model_len={max_seq_len}. "
                "Truncate sequences or increase --max-model-len.",
                field=f"sequences[{i}]",
            )
    if body.top_logprobs < 0:
        raise InvalidArgument(f"top_logprobs must be >= 0, got {body.top_logprobs}", field="top_logprobs")
    if body.response_format not in ("json", "binary"):
        raise InvalidArgument(
            f"response_format must be 'json' or 'binary', got {body.response_format!r}", field="response_format"
        )
    if not (math.isfinite(body.temperature) and body.temperature > 0):
        raise InvalidArgument(f"temperature must be positive, got {body.temperature}", field="temperature")


async def sequence_logprobs(
    service: TeacherService,
    body: SequenceLogprobsRequest,
    *,
    request_id: str,
    timeout: float | None,
    apply_temperature: bool,
) -> bytes:
    """The response body (JSON bytes) of one request."""
    name = resolve_model(service, body.model)
    info = service.served_model(name).info
    _check(body, info.max_seq_len)
    k = body.top_logprobs
    check_logprobs_caps(None, k, info.max_top_k)
    # Scored positions start at max(P, 1): position 0 has no distribution.
    starts = [max(p, 1) for p in body.prompt_lengths]
    wanted = [i for i, (seq, start) in enumerate(zip(body.sequences, starts, strict=True)) if start < len(seq)]
    results: dict[int, object] = {}
    if wanted:
        request = LogitsRequest(
            model=name,
            sequences=[{"token_ids": body.sequences[i], "start": starts[i]} for i in wanted],
            top_k=max(k, 1),
            temperature=float(np.float32(body.temperature)) if apply_temperature else 1.0,
        )
        answer = await service.logits(request, request_id=request_id, timeout=timeout)
        results = dict(zip(wanted, answer.results, strict=True))
    if body.response_format == "binary":
        return _binary(body, results, k)
    return _json(body, results, k)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _binary(body: SequenceLogprobsRequest, results: dict, k: int) -> bytes:
    lengths = [len(seq) - p for seq, p in zip(body.sequences, body.prompt_lengths, strict=True)]
    batch, longest = len(lengths), max(lengths, default=0)
    logprobs = np.full((batch, longest, k), -np.inf, dtype=np.float32)
    token_ids = np.zeros((batch, longest, k), dtype=np.int32)
    actual_logprobs = np.full((batch, longest, 1), -np.inf, dtype=np.float32)
    actual_ids = np.zeros((batch, longest, 1), dtype=np.int32)
    for b, result in results.items():
        offset = max(body.prompt_lengths[b], 1) - body.prompt_lengths[b]  # 1 when P = 0: row 0 stays empty
        rows = result.num_rows
        ids, values, _ = result.dense(k)
        logprobs[b, offset : offset + rows] = values[:, :k]
        token_ids[b, offset : offset + rows] = ids[:, :k]
        actual_logprobs[b, offset : offset + rows, 0] = result.token_logprobs
        actual_ids[b, offset : offset + rows, 0] = body.sequences[b][body.prompt_lengths[b] + offset :]
    payload = {
        "logprobs_b64": _b64(logprobs),
        "token_ids_b64": _b64(token_ids),
        "actual_logprobs_b64": _b64(actual_logprobs),
        "actual_token_ids_b64": _b64(actual_ids),
        "shape": [batch, longest, k],
        "completion_lengths": lengths,
    }
    return json.dumps(payload, separators=(",", ":")).encode("ascii")


def _json(body: SequenceLogprobsRequest, results: dict, k: int) -> bytes:
    all_logprobs, all_ids = [], []
    for b, (sequence, prompt_length) in enumerate(zip(body.sequences, body.prompt_lengths, strict=True)):
        seq_logprobs: list[list[float]] = []
        seq_ids: list[list[int]] = []
        if prompt_length == 0 and sequence:  # position 0: no entry
            seq_logprobs.append([])
            seq_ids.append([])
        result = results.get(b)
        if result is not None:
            ids, values, _ = result.dense(k)
            start = max(prompt_length, 1)
            for row in range(result.num_rows):
                row_ids, row_values = ids[row, :k].tolist(), values[row, :k].tolist()
                actual = int(sequence[start + row])
                if actual not in row_ids:  # vLLM's entry holds the realised token too, ranked after the top-K
                    row_ids.append(actual)
                    row_values.append(float(result.token_logprobs[row]))
                seq_ids.append(row_ids)
                seq_logprobs.append(row_values)
        all_logprobs.append(seq_logprobs)
        all_ids.append(seq_ids)
    # Python's json writes -inf as -Infinity, as TRL's server (FastAPI's default encoder) does.
    return json.dumps({"logprobs": all_logprobs, "logprob_token_ids": all_ids}, separators=(",", ":")).encode()
