"""TRL's own client code against the service (PyPI `trl`, the version pinned in the dev extra; skipped when
it is not installed):

- `trl.generation.vllm_client.VLLMClient.get_sequence_logprobs` (the server-teacher trainers' teacher call;
  since TRL 1.11 a POST to vLLM's `/v1/completions` with prompt_logprobs, parsed by TRL's own
  `_format_sequence_logprobs`); TRL <= 1.10 called `trl vllm-serve`'s `/get_sequence_logprobs/` instead,
  tested with that release's client in test_trl_vllm_serve_dialect.py;
- the async distillation trainer's teacher call (`_AsyncRolloutLoop._score_with_teacher`, a POST to
  `/v1/completions` with prompt_logprobs, parsed by TRL's `_parse_teacher_logprobs_at_position`) and its
  model lookup (`_resolve_teacher_model_names`, GET /v1/models).

VLLMClient's constructor refuses to run without `vllm` installed (it needs vLLM's weight-transfer modules,
which scoring never uses). Where vllm is not importable the client object is made without that
constructor and given what it would have set (a requests session, base_url, and `model` read from
/v1/models as the constructor reads it); every method then runs as TRL wrote it, `check_server` included.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from tests.compat.conftest import reference_logprobs

trl_vllm_client = pytest.importorskip("trl.generation.vllm_client", reason="needs PyPI `trl`")
SEQUENCES = [[5, 60, 70, 80, 90, 101], [9, 12, 40], [7, 8]]  # the last has no completion
PROMPT_LENGTHS = [3, 0, 2]
ATOL = 2e-5


def trl_client(base_url: str):
    from trl.import_utils import is_vllm_available

    cls = trl_vllm_client.VLLMClient
    if is_vllm_available():
        return cls(base_url=base_url, connection_timeout=30)
    import requests

    client = cls.__new__(cls)  # the constructor needs vLLM's weight-transfer modules; see the module docstring
    client.session = requests.Session()
    client.base_url = base_url
    client.check_server(total_timeout=30)  # TRL's own readiness wait (GET /health)
    client.model = client._get(f"{base_url}/v1/models")["data"][0]["id"]  # as the constructor does
    return client


def expected_rows(model, sequence: list[int], prompt_length: int, k: int):
    """(top ids (C, k), top logprobs (C, k), actual logprobs (C,)); position 0 has no distribution."""
    reference = reference_logprobs(model, sequence)
    ids, lps, actual = [], [], []
    for position in range(prompt_length, len(sequence)):
        if position == 0:
            ids.append([0] * k)
            lps.append([-math.inf] * k)
            actual.append(-math.inf)
            continue
        row = reference[position - 1]
        top = np.argsort(-row, kind="stable")[:k]
        ids.append(top.tolist())
        lps.append(row[top].tolist())
        actual.append(float(row[sequence[position]]))
    return np.array(ids), np.array(lps), np.array(actual)


def test_vllm_client_get_sequence_logprobs(tiny_server, tiny_model) -> None:
    client = trl_client(tiny_server.http_url)
    assert client.model == "tiny"
    k = 4
    out = client.get_sequence_logprobs(SEQUENCES, PROMPT_LENGTHS, top_logprobs=k, temperature=1.0)
    assert set(out) == {"logprobs", "logprob_token_ids", "actual_logprobs", "actual_token_ids"}
    for b, (sequence, prompt_length) in enumerate(zip(SEQUENCES, PROMPT_LENGTHS, strict=True)):
        ids, lps, actual = expected_rows(tiny_model, sequence, prompt_length, k)
        assert len(out["logprobs"][b]) == len(sequence) - prompt_length
        np.testing.assert_array_equal(np.array(out["logprob_token_ids"][b]).reshape(-1, k), ids.reshape(-1, k))
        np.testing.assert_allclose(np.array(out["logprobs"][b]).reshape(-1, k), lps.reshape(-1, k), atol=ATOL)
        np.testing.assert_allclose(np.array(out["actual_logprobs"][b]).reshape(-1), actual, atol=ATOL)
        assert np.array(out["actual_token_ids"][b]).reshape(-1).tolist() == sequence[prompt_length:]
    chunked = client.get_sequence_logprobs(SEQUENCES, PROMPT_LENGTHS, top_logprobs=k, chunk_size=1)
    assert chunked == out


def test_vllm_client_errors_name_the_cap(tiny_server) -> None:
    client = trl_client(tiny_server.http_url)
    with pytest.raises(Exception, match="Request failed: 400") as info:
        client.get_sequence_logprobs([[1, 2, 3]], [1], top_logprobs=1000)
    assert "greater than max allowed: 320" in str(info.value)


def test_async_distillation_teacher_call(tiny_server, tiny_model) -> None:
    worker = pytest.importorskip("trl.experimental.async_distillation.async_rollout_worker")
    import aiohttp
    from accelerate import PartialState

    PartialState(cpu=True)  # the worker logs through accelerate, which needs its (single-process) state

    prompt, completion = [5, 60, 70], [80, 90, 101]

    async def run():
        loop = worker._AsyncRolloutLoop.__new__(worker._AsyncRolloutLoop)  # only the teacher-call state
        loop.teacher_server_urls = {"default": tiny_server.http_url}
        loop.teacher_model_names = {}
        loop.teacher_top_k, loop.teacher_temperature, loop.request_timeout = 3, 1.0, 60
        loop._counters = {}
        async with aiohttp.ClientSession() as session:
            loop.session = session
            await loop._resolve_teacher_model_names()
            return loop.teacher_model_names, await loop._score_with_teacher(
                prompt, completion, tiny_server.http_url, loop.teacher_model_names["default"]
            )

    names, (topk_ids, topk_logprobs) = asyncio.run(run())
    assert names == {"default": "tiny"}
    sequence = prompt + completion
    reference = reference_logprobs(tiny_model, sequence)
    for t, position in enumerate(range(len(prompt), len(sequence))):
        row = reference[position - 1]
        top = np.argsort(-row, kind="stable")[:3].tolist()
        expected = top + ([] if sequence[position] in top else [sequence[position]])
        assert topk_ids[t] == expected  # TRL sorts by rank: top-3, then the realised token at its true rank
        np.testing.assert_allclose(topk_logprobs[t], row[expected], atol=ATOL)
