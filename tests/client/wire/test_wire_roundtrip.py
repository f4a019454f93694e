"""Round trips of both variants on random responses (hypothesis), checked against the invariants of
docs/wire-format.md and against the plain reference decoder written from that document."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from tests.client.wire import reference_decoder
from tests.client.wire.synthetic import teacher_response


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max()
    return x - (np.log(np.exp(x - top).sum()) + top)


def _sequence(
    rng: np.random.Generator, vocab: int, k: int, rows: int, sample: bool, masked: bool
) -> SequenceLogits:
    lengths = rng.integers(0, k + 1, rows) if sample else np.full(rows, k)
    ids, values, tails = [], [], []
    for length in lengths:
        logprobs = _log_softmax(rng.normal(0.0, rng.uniform(0.1, 12.0), vocab))
        if masked:  # some ids impossible (-inf), as with masked logits
            logprobs[rng.random(vocab) < 0.2] = -np.inf
        order = np.argsort(-logprobs, kind="stable")
        chosen = rng.choice(vocab, length, replace=False) if sample else order[:length]
        chosen = chosen[np.argsort(-logprobs[chosen], kind="stable")]
        ids.append(chosen)
        values.append(logprobs[chosen])
        mass = np.exp(logprobs[chosen]).sum()
        tails.append(np.log1p(-mass) if mass < 1 - 1e-7 and rng.random() < 0.9 else -np.inf)
    n = int(lengths.sum())
    token = rng.normal(-3.0, 2.0, rows)
    token[rng.random(rows) < 0.1] = -np.inf
    return SequenceLogits(
        row_lengths=lengths,
        top_ids=np.concatenate(ids) if ids else np.zeros(0),
        top_logprobs=np.concatenate(values) if values else np.zeros(0),
        token_logprobs=token,
        tail_logprobs=np.array(tails),
        counts=rng.integers(1, 60, n) if sample else None,
    )


@st.composite
def responses(draw) -> list[SequenceLogits]:
    vocab = draw(st.sampled_from([1, 2, 7, 40, 300, 5000]))
    k = draw(st.integers(1, min(vocab, 48)) | st.just(vocab) if vocab <= 300 else st.integers(1, 48))
    sample = draw(st.booleans())
    masked = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.lists(st.integers(0, 6), max_size=3))
    return [_sequence(rng, vocab, k, r, sample, masked) for r in rows]


def _sorted_by_id(r: SequenceLogits) -> tuple[np.ndarray, ...]:
    row = np.repeat(np.arange(r.num_rows), r.row_lengths)
    order = np.lexsort((r.top_ids, row))
    counts = None if r.counts is None else r.counts[order]
    return r.top_ids[order], counts, order


def _check_reference(payload: bytes, decoded: list[SequenceLogits], exact_values: bool) -> None:
    reference = reference_decoder.decode(payload)
    assert len(reference) == len(decoded)
    for ref, got in zip(reference, decoded, strict=True):
        np.testing.assert_array_equal(ref["row_lengths"], got.row_lengths)
        np.testing.assert_array_equal(ref["top_ids"], got.top_ids)
        assert (ref["counts"] is None) == (got.counts is None)
        if got.counts is not None:
            np.testing.assert_array_equal(ref["counts"], got.counts)
        for name in ("token_logprobs", "tail_logprobs") + (("top_logprobs",) if exact_values else ()):
            assert np.array_equal(
                np.array(ref[name], dtype=np.float32).view(np.uint32), getattr(got, name).view(np.uint32)
            )
        if not exact_values and got.top_logprobs.size:  # two libms may differ by one float32 ulp
            np.testing.assert_array_max_ulp(
                np.array(ref["top_logprobs"], dtype=np.float32), got.top_logprobs, maxulp=1
            )


@given(responses())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lossless_round_trip_is_bit_exact(results):
    payload = wire.encode(results, lossless=True)
    decoded = wire.decode(payload)
    assert len(decoded) == len(results)
    assert all(got.equals(want) for got, want in zip(decoded, results, strict=True))
    _check_reference(payload, decoded, exact_values=True)


@given(responses())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lossy_round_trip_keeps_ids_counts_and_scores_and_bounds_the_error(results):
    payload = wire.encode(results)
    decoded = wire.decode(payload)
    levels = int.from_bytes(payload[24:28], "little")  # header field `quant` (M)
    kl = []
    for got, want in zip(decoded, results, strict=True):
        np.testing.assert_array_equal(got.row_lengths, want.row_lengths)
        assert np.array_equal(got.token_logprobs.view(np.uint32), want.token_logprobs.view(np.uint32))
        assert np.array_equal(got.tail_logprobs.view(np.uint32), want.tail_logprobs.view(np.uint32))
        got_ids, got_counts, got_order = _sorted_by_id(got)
        want_ids, want_counts, want_order = _sorted_by_id(want)
        np.testing.assert_array_equal(got_ids, want_ids)
        if want.counts is not None:
            np.testing.assert_array_equal(got_counts, want_counts)
        # Each value lies in its quantization bin: |sqrt(p) - sqrt(q)| <= 1 / (2M) (+ float32 rounding).
        root_exact = np.exp(want.top_logprobs[want_order].astype(np.float64) / 2)
        root_decoded = np.exp(got.top_logprobs[got_order].astype(np.float64) / 2)
        assert np.all(np.abs(root_exact - root_decoded) <= 0.5 / levels + 1e-6)
        # Rows come back sorted by decoded logprob, descending.
        row = np.repeat(np.arange(got.num_rows), got.row_lengths)
        assert np.all((np.diff(got.top_logprobs) <= 0) | (row[1:] != row[:-1]))
        kl.append(wire.kl_exact_vs_decoded(want, got))
    if kl and np.concatenate(kl).size:
        assert np.concatenate(kl).mean() <= wire.DEFAULT_TARGET_KL * (1 + 1e-9)
    _check_reference(payload, decoded, exact_values=False)


@pytest.mark.parametrize("lossless", [False, True])
def test_whole_vocabulary_rows_with_impossible_ids(lossless):
    rng = np.random.default_rng(3)
    vocab = 49152
    logprobs = np.stack([_log_softmax(rng.normal(0, 3, vocab)) for _ in range(2)])
    logprobs[:, rng.random(vocab) < 0.1] = -np.inf
    ids = np.argsort(-logprobs, axis=1, kind="stable")
    result = SequenceLogits.from_dense(
        ids, np.take_along_axis(logprobs, ids, 1), [-1.5, -np.inf], [-np.inf, -np.inf]
    )
    decoded = wire.decode(wire.encode([result], lossless=lossless))[0]
    if lossless:
        assert decoded.equals(result)
    else:
        assert float(wire.kl_exact_vs_decoded(result, decoded).mean()) <= wire.DEFAULT_TARGET_KL * (1 + 1e-9)
        np.testing.assert_array_equal(np.sort(decoded.top_ids[:vocab]), np.arange(vocab))


def test_lossless_keeps_any_float_and_any_order():
    values = np.array(
        [0.0, -0.0, np.nan, np.inf, -np.inf, -1e-45, -3.5, 7.25, np.float32(-1e38)], dtype=np.float32
    )
    result = SequenceLogits(
        row_lengths=[4, 0, 5],
        top_ids=[5, 3, 5, 0, 9, 2**31 - 1, 1, 4, 8],
        top_logprobs=values,
        token_logprobs=[np.nan, -0.0, 1.0],
        tail_logprobs=[-np.inf, 0.5, np.nan],
    )
    decoded = wire.decode(wire.encode([result], lossless=True))[0]
    for name in ("top_logprobs", "token_logprobs", "tail_logprobs"):
        assert np.array_equal(getattr(decoded, name).view(np.uint32), getattr(result, name).view(np.uint32))
    np.testing.assert_array_equal(decoded.top_ids, result.top_ids)
    np.testing.assert_array_equal(decoded.row_lengths, result.row_lengths)


@pytest.mark.parametrize("lossless", [False, True])
def test_empty_responses_sequences_and_rows(lossless):
    assert wire.decode(wire.encode([], lossless=lossless)) == []
    empty = SequenceLogits(row_lengths=[], top_ids=[], top_logprobs=[], token_logprobs=[], tail_logprobs=[])
    rows_without_entries = SequenceLogits(
        row_lengths=[0, 0],
        top_ids=[],
        top_logprobs=[],
        token_logprobs=[-1, -2],
        tail_logprobs=[0, 0],
        counts=[],
    )
    for results in ([empty, empty], [rows_without_entries]):
        decoded = wire.decode(wire.encode(results, lossless=lossless))
        assert all(got.equals(want) for got, want in zip(decoded, results, strict=True))


def test_encode_is_deterministic_and_self_describing():
    rng = np.random.default_rng(1)
    results = [_sequence(rng, 300, 20, 5, sample=False, masked=False)]
    lossy, lossless = wire.encode(results), wire.encode(results, lossless=True)
    assert lossy == wire.encode(results) and lossless == wire.encode(results, lossless=True)
    assert lossy[:4] == lossless[:4] == b"DDWL" and lossy[4] == lossless[4] == 1  # magic, version
    assert (lossless[5], lossy[5]) == (1, 2)  # variant


def test_invalid_inputs_are_refused_by_the_encoder():
    good = SequenceLogits(
        row_lengths=[2], top_ids=[1, 2], top_logprobs=[-0.1, -3], token_logprobs=[-1], tail_logprobs=[-4]
    )
    with pytest.raises(TypeError):
        wire.encode([good, "not a result"])
    with pytest.raises(ValueError, match="non-negative"):
        wire.encode([SequenceLogits([1], [-4], [-0.5], [-1], [-2])])
    with pytest.raises(ValueError, match="same mode"):
        wire.encode([good, SequenceLogits([1], [4], [-0.5], [-1], [-2], counts=[3])])
    with pytest.raises(ValueError, match="NaN"):
        wire.encode([SequenceLogits([1], [4], [np.nan], [-1], [-2])])
    for value in (np.inf, 100.0):  # not log-probabilities; lossless keeps them
        bad = SequenceLogits([2], [4, 5], [-1.0, value], [-1], [-2])
        with pytest.raises(ValueError, match=r"\+inf or values above 64"):
            wire.encode([bad])
        assert wire.decode(wire.encode([bad], lossless=True))[0].equals(bad)
    repeated = SequenceLogits([3], [7, 2, 7], [-0.5, -1.0, -0.5], [-1], [-2])  # id 7 twice at one level
    with pytest.raises(ValueError, match="repeat an id within a row"):
        wire.encode([repeated])
    with pytest.raises(ValueError, match="target_kl"):
        wire.encode([good], target_kl=0.0)
    good.top_ids = np.array([1], dtype=np.int32)  # mutated after construction
    with pytest.raises(ValueError, match="inconsistent"):
        wire.encode([good])


def test_sort_keys_wider_than_32_bits_encode():
    """Top-k rows (one length) whose sort key, level and dictionary key packed together, needs more than
    32 bits (M at its cap, 2**20 levels, and thousands of distinct ids): the int32 keys are OR-ed into
    64-bit words (this raised a TypeError before)."""
    results = teacher_response(sequences=2, rows=64, k=128, seed=1)
    payload = wire.encode(results, target_kl=1e-12)
    assert int.from_bytes(payload[24:28], "little") == 1 << 20  # M
    assert int.from_bytes(payload[20:24], "little") > 1 << 12  # distinct ids: 20 + 13 bits
    for exact, decoded in zip(results, wire.decode(payload), strict=True):
        assert np.array_equal(decoded.row_lengths, exact.row_lengths)
        for r in range(exact.num_rows):
            rows = slice(128 * r, 128 * (r + 1))
            order = np.argsort(exact.top_ids[rows])
            assert np.array_equal(np.sort(decoded.top_ids[rows]), exact.top_ids[rows][order])
            got = decoded.top_logprobs[rows][np.argsort(decoded.top_ids[rows])]
            np.testing.assert_allclose(got, exact.top_logprobs[rows][order], atol=1e-2)  # p ~ 1e-7: 2e-3
