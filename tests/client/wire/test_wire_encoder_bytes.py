"""The encoder writes exactly the bytes of the frozen reference encoder (reference_encoder.py), on random
responses covering every option and shape it handles: both variants, "topk" (uniform rows) and "sample"
(ragged rows, counts, empty rows) responses, tied and -inf logprobs, rows in any order, tiny positive
logprobs, ids from a small vocabulary to the whole int32 range, KL targets that make the quantizer's M
small or hit its cap, and payloads large enough for the quantizer's subsample and for many blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from tests.client.wire import reference_encoder
from tests.client.wire.synthetic import teacher_response


def _row_logprobs(rng: np.random.Generator, vocab: int, style: str) -> np.ndarray:
    """A log-softmax over `vocab` ids, float32; `style` adds ties, -inf or values at/above 0."""
    logits = rng.normal(0.0, rng.uniform(0.05, 10.0), vocab)
    if style == "ties":  # few distinct values: long runs of equal levels and equal logprobs
        logits = np.round(logits * rng.uniform(0.2, 2.0))
    logprobs = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    if style == "masked":
        logprobs[rng.random(vocab) < 0.3] = -np.inf
    if style == "edge":  # logprobs at exactly 0, just above 0 (rounding) and tiny magnitudes
        logprobs[rng.integers(0, vocab, 3)] = rng.choice([0.0, -0.0, 1e-7, 2e-6, -1e-30, -1e-45], 3)
    return logprobs.astype(np.float32)


def _sequence(rng, vocab, k, rows, sample, style, order, id_map) -> SequenceLogits:
    lengths = rng.integers(0, k + 1, rows) if sample else np.full(rows, k)
    ids, values = [], []
    for length in lengths:
        logprobs = _row_logprobs(rng, vocab, style)
        chosen = rng.choice(vocab, length, replace=False) if sample else np.argsort(-logprobs, kind="stable")[:length]
        if order == "sorted":
            chosen = chosen[np.argsort(-logprobs[chosen], kind="stable")]
        ids.append(id_map[chosen])
        values.append(logprobs[chosen])
    n = int(lengths.sum())
    tails = np.where(rng.random(rows) < 0.2, -np.inf, -rng.exponential(2.0, rows))
    return SequenceLogits(
        row_lengths=lengths,
        top_ids=np.concatenate(ids) if ids else np.zeros(0),
        top_logprobs=np.concatenate(values) if values else np.zeros(0),
        token_logprobs=-rng.exponential(3.0, rows),
        tail_logprobs=tails,
        counts=rng.integers(1, 70000, n) if sample else None,  # above 2**16: counts with extra bits
    )


def _response(seed, vocab, k, row_counts, sample, style, order, id_space) -> list[SequenceLogits]:
    rng = np.random.default_rng(seed)
    id_map = np.sort(rng.choice(id_space, vocab, replace=False)) if id_space > vocab else np.arange(vocab)
    return [_sequence(rng, vocab, k, rows, sample, style, order, id_map) for rows in row_counts]


def _assert_same_bytes(results: list[SequenceLogits], **options) -> None:
    got, want = wire.encode(results, **options), reference_encoder.encode(results, **options)
    assert got == want, f"payloads differ ({len(got)} vs {len(want)} bytes) with {options}"


STYLES = ["plain", "ties", "masked", "edge"]


@st.composite
def responses(draw) -> list[SequenceLogits]:
    vocab = draw(st.sampled_from([1, 2, 7, 40, 320, 5000]))
    k = draw(st.integers(1, min(vocab, 64)) | st.just(vocab) if vocab <= 320 else st.integers(1, 64))
    return _response(
        draw(st.integers(0, 2**32 - 1)),
        vocab,
        k,
        draw(st.lists(st.integers(0, 9), max_size=4)),
        draw(st.booleans()),
        draw(st.sampled_from(STYLES)),
        draw(st.sampled_from(["sorted", "any"])),
        draw(st.sampled_from([vocab, 1 << 16, (1 << 31) - 1])),
    )


@given(responses(), st.booleans(), st.sampled_from([9e-5, 9e-5, 1e-2, 3e-7]))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
def test_small_responses_encode_to_the_reference_bytes(results, lossless, target_kl):
    _assert_same_bytes(results, lossless=lossless, target_kl=target_kl)


@pytest.mark.parametrize(
    "vocab, k, rows, sample, style, order, id_space",
    [
        (320, 128, [56] * 32, False, "plain", "sorted", 320),  # the service bench's shape (tiny model)
        (320, 320, [40] * 3, False, "ties", "sorted", 320),  # whole-vocabulary rows
        (5000, 128, [300, 0, 180], False, "masked", "any", 5000),
        (5000, 400, [150, 90], True, "ties", "sorted", 1 << 30),  # ragged rows, counts, sparse ids
        (49152, 200, [250, 150], True, "edge", "any", 49152),
    ],
)
@pytest.mark.parametrize("lossless", [False, True])
def test_large_responses_encode_to_the_reference_bytes(vocab, k, rows, sample, style, order, id_space, lossless):
    """More than 2 * 16384 entries: the quantizer calibrates on a subsample, the old encoder used many blocks."""
    results = _response(sum(rows) + k, vocab, k, rows, sample, style, order, id_space)
    assert sum(len(r.top_ids) for r in results) > 2 * 16384
    _assert_same_bytes(results, lossless=lossless)


def test_the_quantizer_cap_encodes_to_the_reference_bytes():
    """A KL target no M can reach: the quantizer stops at its cap (2**20 levels)."""
    results = _response(11, 320, 16, [3, 2], False, "plain", "sorted", 320)
    _assert_same_bytes(results, target_kl=1e-14)
    assert int.from_bytes(wire.encode(results, target_kl=1e-14)[24:28], "little") == 1 << 20  # header's M


@pytest.mark.parametrize("target_kl", [9e-5, 2e-3])
def test_realistic_teacher_rows_encode_to_the_reference_bytes(target_kl):
    results = teacher_response(sequences=6, rows=64, k=128, seed=5)
    _assert_same_bytes(results, target_kl=target_kl)
    _assert_same_bytes(results, lossless=True)


def test_threads_encoding_at_once_write_the_same_bytes():
    """Scratch buffers and the zstd compressor are per thread: concurrent encodes of different responses
    must not see each other's temporaries."""
    from concurrent.futures import ThreadPoolExecutor

    responses = [_response(seed, 320, 128, [150, 120], seed % 2 == 1, "plain", "sorted", 320) for seed in range(6)]
    expected = [reference_encoder.encode(r) for r in responses]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            assert list(pool.map(wire.encode, responses)) == expected
