"""Fidelity and size of the lossy variant on realistic distributions, and the measuring helpers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from tests.client.wire.synthetic import teacher_response


def _mean_kl(exact: list[SequenceLogits], decoded: list[SequenceLogits]) -> float:
    return float(
        np.concatenate([wire.kl_exact_vs_decoded(x, d) for x, d in zip(exact, decoded, strict=True)]).mean()
    )


@pytest.fixture(scope="module")
def response() -> list[SequenceLogits]:
    return teacher_response(sequences=4, rows=128, k=128, seed=0)  # 512 positions, 49,152-id vocabulary


def test_the_synthetic_response_is_shaped_like_smollm2(response):
    probs = np.exp(np.concatenate([r.top_logprobs for r in response]).reshape(-1, 128))
    assert 0.3 < np.median(probs[:, 0]) < 0.5 and 3e-5 < np.median(probs[:, -1]) < 3e-4
    assert 3000 < len(np.unique(np.concatenate([r.top_ids for r in response]))) < 10000


def test_lossy_k128_meets_the_kl_and_byte_targets(response):
    payload = wire.encode(response)
    assert _mean_kl(response, wire.decode(payload)) <= 1e-4
    assert wire.bytes_per_position(payload, response) <= 200


def test_lossless_is_smaller_than_raw_fp32_and_int32(response):
    payload = wire.encode(response, lossless=True)
    assert wire.bytes_per_position(payload, response) < 0.5 * 128 * 8


def test_kl_follows_the_fisher_estimate(response):
    """KL ~ k / (6 M**2) for steps of 1/M in sqrt(p) (quantize.py); the encoder reports M in the header."""
    payload = wire.encode(response)
    levels = int.from_bytes(payload[24:28], "little")
    assert 0.9 < _mean_kl(response, wire.decode(payload)) / (128 / (6 * levels**2)) < 1.1


@pytest.mark.parametrize("k", [16, 256])
def test_the_encoder_meets_its_kl_target(k):
    results = teacher_response(sequences=2, rows=16, k=k, vocab=8192, seed=k)
    for target in (1e-5, wire.DEFAULT_TARGET_KL, 1e-3):
        assert _mean_kl(results, wire.decode(wire.encode(results, target_kl=target))) <= target


def reference_kl(exact: SequenceLogits, decoded: SequenceLogits) -> list[float]:
    """Per row, with Python floats and dicts keyed by id: sum p ln(p / q) - p + q over entries and tail."""

    def term(p: float, q: float) -> float:
        if p == 0:
            return q
        return math.inf if q == 0 else p * math.log(p / q) - p + q

    out, at = [], 0
    for r, length in enumerate(exact.row_lengths):
        p = {
            int(i): math.exp(v)
            for i, v in zip(
                exact.top_ids[at : at + length], exact.top_logprobs[at : at + length], strict=True
            )
        }
        q = {
            int(i): math.exp(v)
            for i, v in zip(
                decoded.top_ids[at : at + length], decoded.top_logprobs[at : at + length], strict=True
            )
        }
        assert p.keys() == q.keys()
        tail = term(math.exp(exact.tail_logprobs[r]), math.exp(decoded.tail_logprobs[r]))
        out.append(sum(term(p[i], q[i]) for i in p) + tail)
        at += length
    return out


def test_kl_helper_matches_a_plain_loop():
    rng = np.random.default_rng(11)
    lengths = np.array([5, 0, 3, 8, 1])
    ids = np.concatenate([rng.choice(50, n, replace=False) for n in lengths])
    values = np.log(rng.dirichlet(np.ones(len(ids))))
    values[[2, 9]] = -np.inf  # impossible ids
    exact = SequenceLogits(lengths, ids, values, np.zeros(5), np.log([0.1, 0.5, 1e-9, 0.2, 0.3]))
    shuffled = np.concatenate(
        [o + rng.permutation(n) for o, n in zip(np.r_[0, np.cumsum(lengths)[:-1]], lengths, strict=True)]
    )
    noisy = values[shuffled] + rng.normal(0, 0.05, len(ids))
    noisy[ids[shuffled] == ids[2]] = -30.0  # mass where the exact side has none
    decoded = SequenceLogits(lengths, ids[shuffled], noisy, np.zeros(5), np.log([0.11, 0.5, 1e-8, 0.2, 0.29]))
    np.testing.assert_allclose(
        wire.kl_exact_vs_decoded(exact, decoded), reference_kl(exact, decoded), rtol=1e-9, atol=1e-15
    )
    assert np.all(wire.kl_exact_vs_decoded(exact, exact) == 0)


def test_kl_helper_refuses_rows_with_different_ids():
    a = SequenceLogits([2], [1, 2], [-1, -2], [0], [-3])
    with pytest.raises(ValueError, match="different ids"):
        wire.kl_exact_vs_decoded(a, SequenceLogits([2], [1, 3], [-1, -2], [0], [-3]))
    with pytest.raises(ValueError, match="row lengths"):
        wire.kl_exact_vs_decoded(a, SequenceLogits([1, 1], [1, 2], [-1, -2], [0, 0], [-3, -3]))


def test_bytes_per_position_counts_rows_of_all_sequences():
    a = SequenceLogits([1, 1, 0], [1, 2], [-1, -2], [0, 0, 0], [-3, -3, 0])
    assert wire.bytes_per_position(b"x" * 60, [a, a]) == 10.0
    with pytest.raises(ValueError):
        wire.bytes_per_position(b"x", [])


@pytest.mark.integration
def test_real_smollm2_meets_the_targets():
    """bench/wire_size.py on the real SmolLM2-135M over standard-library docstrings, 512 positions."""
    spec = importlib.util.spec_from_file_location(
        "wire_size", Path(__file__).parents[3] / "bench" / "wire_size.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {r["method"]: r for r in bench.measure(ks=(128,), sequences=4, repeats=1)}
    assert rows["lossy"]["bytes_per_position"] <= 200 and rows["lossy"]["mean_kl"] <= 1e-4
    assert rows["lossless"]["mean_kl"] == 0 and rows["lossless"]["max_token_logprob_error"] == 0
    assert rows["lossless"]["bytes_per_position"] < rows["trl-base64"]["bytes_per_position"] / 2
