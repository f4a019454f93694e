"""TeacherClient against a real `dualdistill serve` process on loopback (tiny random model).

Checks that every transport and format (HTTP json / binary / binary-lossless, gRPC json / binary, sync
and asyncio) returns the same distributions as an in-process transformers forward, that generate works
on both transports, that validation errors are not retried, that timeouts fire, and that the tokenizer
handshake accepts the served tokenizer and refuses another one.
"""

from __future__ import annotations

import asyncio
import functools
import time

import numpy as np
import pytest
import torch

from dualdistill.client import (
    NO_RETRIES,
    AsyncTeacherClient,
    RetryPolicy,
    TeacherClient,
    TeacherServiceError,
    TokenizerMismatchError,
)
from dualdistill.prefetch import Prefetcher
from dualdistill.protocol.tokenizer_hash import tokenizer_sha256
from tests.client.test_client_process import TinyTeacher

MODEL = "tiny"
SEQUENCES = [[5, 17, 33, 60, 7, 99, 250, 12], [3, 4], [200, 100, 50, 25, 12, 6, 3, 1, 0, 319, 42]]
STARTS = [3, 1, 1]
TOP_K = 7
# (transport, format, lossy). json and binary-lossless carry float32 exactly; "binary" quantizes uniformly
# in sqrt(probability) (docs/wire-format.md), so it is compared there.
VARIANTS = [
    ("http", "json", False),
    ("http", "binary", True),
    ("http", "binary-lossless", False),
    ("grpc", "json", False),
    ("grpc", "binary", True),
]
LOSSLESS_ATOL = 1e-4  # logprob, float32 forward on server vs float64 log_softmax here
LOSSY_SQRT_ATOL = 1e-2  # |sqrt(p') - sqrt(p)|; the codec's default step is far finer (1/(2M), M >= 100)


@pytest.fixture(scope="module")
def teacher(tiny_server, tiny_model_dir):
    return TinyTeacher(tiny_server.http_url, tiny_server.grpc_target, str(tiny_model_dir))


def make_client(teacher, transport, **kwargs) -> TeacherClient:
    return TeacherClient(teacher.url(transport), **kwargs)


@functools.lru_cache(maxsize=1)
def load_reference_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference(model_dir, sequence, start, k, temperature=1.0):
    """In-process forward: (ids (R, k), logprobs (R, k), token_logprobs (R,), tail (R,)) for i in [start, T)."""
    model = load_reference_model(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    logprobs = torch.log_softmax(logits / temperature, dim=-1).numpy()
    rows = []
    for i in range(start, len(sequence)):
        row = logprobs[i - 1]
        order = np.lexsort((np.arange(len(row)), -row))[:k]  # logprob descending, ties: lower id first
        rest = np.delete(row, order)
        rows.append((order, row[order], row[sequence[i]], np.log(np.exp(rest).sum())))
    return [np.array(column) for column in zip(*rows, strict=True)]


def assert_close(got, expected, lossy):
    if lossy:
        np.testing.assert_allclose(
            np.exp(np.asarray(got) / 2), np.exp(np.asarray(expected) / 2), atol=LOSSY_SQRT_ATOL
        )
    else:
        np.testing.assert_allclose(got, expected, atol=LOSSLESS_ATOL, rtol=LOSSLESS_ATOL)


def assert_matches_reference(teacher, results, lossy):
    assert len(results) == len(SEQUENCES)
    for result, sequence, start in zip(results, SEQUENCES, STARTS, strict=True):
        ids, logprobs, token_logprobs, tail = reference(teacher.model_dir, sequence, start, TOP_K)
        got_ids, got_logprobs, _ = result.dense()
        assert result.num_rows == len(sequence) - start
        if lossy:
            # Near-equal logprobs may round to the same level, and equal levels list the lower id first,
            # so compare each row as an id -> logprob mapping.
            by_id = np.argsort(ids, axis=1, kind="stable")
            ids, logprobs = np.take_along_axis(ids, by_id, 1), np.take_along_axis(logprobs, by_id, 1)
            by_id = np.argsort(got_ids, axis=1, kind="stable")
            got_ids, got_logprobs = (
                np.take_along_axis(got_ids, by_id, 1),
                np.take_along_axis(got_logprobs, by_id, 1),
            )
        np.testing.assert_array_equal(got_ids, ids)
        assert_close(got_logprobs, logprobs, lossy)
        assert_close(result.token_logprobs, token_logprobs, lossy)
        assert_close(result.tail_logprobs, tail, lossy)


# ---- models and the handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_models_and_handshake(teacher, transport, tmp_path):
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_model import build_tiny_model

    served = AutoTokenizer.from_pretrained(teacher.model_dir)
    with make_client(teacher, transport) as client:
        (info,) = client.models()
        assert info == client.model_info(MODEL)
        assert (info.name, info.vocab_size, info.tokenizer_sha256) == (
            MODEL,
            len(served),
            tokenizer_sha256(served),
        )
        assert info.eos_token_id == served.eos_token_id and info.fingerprint
        assert client.check_tokenizer(served, MODEL) == info

        other = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "other", corpus_variant=1))
        with pytest.raises(TokenizerMismatchError) as mismatch:
            client.check_tokenizer(other, MODEL)
        message = str(mismatch.value)
        for fact in (MODEL, tokenizer_sha256(other), info.tokenizer_sha256, str(info.vocab_size)):
            assert fact in message
        assert "Load the tokenizer" in message

        with pytest.raises(TeacherServiceError) as missing:
            client.model_info("nope")
        assert (missing.value.code, missing.value.status) == ("NOT_FOUND", 404)


# ---- logits: every transport and format equals the in-process forward ------------------------------------


@pytest.mark.parametrize(("transport", "format", "lossy"), VARIANTS)
def test_logits_equal_reference(teacher, transport, format, lossy):
    with make_client(teacher, transport, format=format) as client:
        results = client.logits(MODEL, SEQUENCES, STARTS, top_k=TOP_K)
    assert_matches_reference(teacher, results, lossy)


def test_transports_agree_with_each_other(teacher):
    results = {}
    for transport, format, _ in VARIANTS:
        with make_client(teacher, transport, format=format) as client:
            results[transport, format] = client.logits(MODEL, SEQUENCES, STARTS, top_k=TOP_K, temperature=0.7)
    exact = [results[key] for key in [("http", "json"), ("http", "binary-lossless"), ("grpc", "json")]]
    for other in exact[1:]:
        assert all(a.equals(b) for a, b in zip(exact[0], other, strict=True))
    assert all(a.equals(b) for a, b in zip(results["http", "binary"], results["grpc", "binary"], strict=True))


def test_sample_mode_same_on_every_transport(teacher):
    draws = []
    for transport, format in [("http", "json"), ("http", "binary-lossless"), ("grpc", "json")]:
        with make_client(teacher, transport, format=format) as client:
            draws.append(client.logits(MODEL, SEQUENCES, STARTS, mode="sample", samples=16, seed=11))
    for first, *others in zip(*draws, strict=True):
        assert all(first.equals(other) for other in others)
        assert (np.add.reduceat(first.counts, first.row_offsets[:-1]) == 16).all()


def test_async_client_equals_sync(teacher):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher.model_dir)
    with make_client(teacher, "grpc", format="json") as client:
        expected = client.logits(MODEL, SEQUENCES, STARTS, top_k=TOP_K)

    async def main():
        async with (
            AsyncTeacherClient(teacher.url("http"), format="binary-lossless") as http,
            AsyncTeacherClient(teacher.url("grpc"), format="json") as grpc_client,
        ):
            calls = [
                c.logits(MODEL, [s], [st], top_k=TOP_K)
                for c in (http, grpc_client)
                for s, st in zip(SEQUENCES, STARTS, strict=True)
            ]
            outcome = await asyncio.gather(*calls)
            info = await grpc_client.check_tokenizer(tokenizer, MODEL)
            (listed,) = await http.models()
            assert listed == info
            return outcome, info, http.stats.calls + grpc_client.stats.calls

    outcome, info, calls = asyncio.run(main())
    assert info.name == MODEL and calls == 2 * len(SEQUENCES) + 2  # + check_tokenizer + models
    per_transport = [[r[0] for r in outcome[:3]], [r[0] for r in outcome[3:]]]
    # Concurrent requests may share a forward pass with a different padding than the sync call had, so
    # the values agree within float32 tolerance (the contract), not necessarily bit for bit.
    for got in per_transport:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a.top_ids, b.top_ids)
            for name in ("top_logprobs", "token_logprobs", "tail_logprobs"):
                np.testing.assert_allclose(
                    getattr(a, name), getattr(b, name), atol=LOSSLESS_ATOL, err_msg=name
                )


# ---- generate -------------------------------------------------------------------------------------------


def test_generate_on_both_transports(teacher):
    prompts = ["What is 7 times 6?", [5, 17, 33], [{"role": "user", "content": "please compute 7 times 6"}]]
    outputs = []
    for transport in ("http", "grpc"):
        with make_client(teacher, transport) as client:
            outputs.append(client.generate(MODEL, prompts, max_new_tokens=6, temperature=0.8, n=2, seed=3))
    http_out, grpc_out = outputs
    assert http_out == grpc_out  # same seed: same completions whatever the transport
    assert [c.prompt_index for c in http_out] == [0, 0, 1, 1, 2, 2]
    assert http_out[2].prompt_token_ids == [5, 17, 33]
    for completion in http_out:
        assert 1 <= len(completion.token_ids) <= 6 and completion.finish_reason in ("stop", "length")
    # A completion's logits request is prompt + completion from start = len(prompt).
    sequence, start = http_out[0].logits_inputs()
    with make_client(teacher, "grpc") as client:
        (result,) = client.logits(MODEL, [sequence], [start], top_k=3)
    assert result.num_rows == len(http_out[0].token_ids)


def test_async_generate(teacher):
    async def main():
        async with AsyncTeacherClient(teacher.url("grpc")) as client:
            return await client.generate(MODEL, [[5, 17, 33]], max_new_tokens=4, temperature=0.0)

    (completion,) = asyncio.run(main())
    with make_client(teacher, "http") as client:
        assert client.generate(MODEL, [[5, 17, 33]], max_new_tokens=4, temperature=0.0) == [completion]


# ---- errors: validation is not retried; timeouts fire ----------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        (dict(sequences=[[1, 2, 3]], starts=[0]), "INVALID_ARGUMENT", "sequences[0].start"),
        (dict(sequences=[[1, 2, 3]], starts=[1], top_k=10**6), "INVALID_ARGUMENT", "top_k"),
        (dict(sequences=[[1, 2, 10**6]], starts=[1]), "INVALID_ARGUMENT", "sequences[0].token_ids"),
        (dict(model="missing", sequences=[[1, 2]], starts=[1]), "NOT_FOUND", "model"),
    ],
)
def test_validation_errors_raise_at_once(teacher, transport, kwargs, code, field):
    call = {"model": MODEL, **kwargs}
    with make_client(teacher, transport, retries=RetryPolicy(max_attempts=5)) as client:
        with pytest.raises(TeacherServiceError) as info:
            client.logits(**call)
        assert client.stats.attempts == 1 and client.stats.retries == 0
    error = info.value
    assert error.code == code and error.status == (404 if code == "NOT_FOUND" else 422)
    assert error.message and error.transport == transport
    assert error.field is not None and error.field.startswith(field)  # gRPC: trailing x-dualdistill-field


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_oversized_request_is_not_retried(teacher, transport):
    # The session server caps bodies and gRPC messages at 200 kB (tests/conftest.py); this is ~250 kB.
    big = [[int(200 + i % 100) for i in range(250)]] * 500
    with make_client(teacher, transport, retries=RetryPolicy(max_attempts=5)) as client:
        with pytest.raises(TeacherServiceError) as info:
            client.logits(MODEL, big, [1] * len(big))
        assert client.stats.attempts == 1
    assert info.value.status == 413, info.value


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_timeout_shorter_than_the_request_fires(teacher, transport):
    long = [[int(i % 300) for i in range(250)]] * 8  # 2,000 tokens and a 30 ms batching window: > 2 ms
    with make_client(teacher, transport, timeout=0.002, retries=NO_RETRIES) as client:
        with pytest.raises(TeacherServiceError) as info:
            client.logits(MODEL, long, [1] * 8, seed=time.time_ns() % 2**63)  # fresh: not answered from a cache
    assert info.value.code == "DEADLINE_EXCEEDED"
    with make_client(teacher, transport, timeout=30) as client:  # the server is fine afterwards
        assert len(client.logits(MODEL, [[1, 2, 3]], [1])) == 1


# ---- Prefetcher with the real client ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_prefetcher_with_client(teacher, transport):
    batches = [(SEQUENCES[i % 3 :] + SEQUENCES[: i % 3], STARTS[i % 3 :] + STARTS[: i % 3]) for i in range(6)]
    with make_client(teacher, transport) as client:

        def fetch(batch):
            sequences, starts = batch
            return client.logits(MODEL, sequences, starts, top_k=TOP_K)

        with Prefetcher(fetch, batches, depth=3) as prefetcher:
            delivered = list(prefetcher)
        direct = [fetch(batch) for batch in batches]
    assert [batch for batch, _ in delivered] == batches
    for (_, got), expected in zip(delivered, direct, strict=True):
        assert [r.num_rows for r in got] == [r.num_rows for r in expected]
        assert all(np.array_equal(a.top_ids, b.top_ids) for a, b in zip(got, expected, strict=True))
