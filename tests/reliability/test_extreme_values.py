"""Valid-looking numbers at the edges of float32 (the wire type of temperature and top_p).

A request may be refused (422 naming the field) or answered with a proper distribution; it must never
get a 500, NaN logprobs (which JSON would show as null, indistinguishable from a -inf tail), or tokens
drawn from a NaN distribution. Found by the schema fuzzer (test_fuzz_http.py); pinned here so that the
fast suite checks them every time. Results are read through "binary-lossless" to see the exact floats.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from dualdistill.protocol import wire
from tests.conftest import TINY_MODEL_NAME

SEQUENCE = {"token_ids": [5, 6, 7, 8], "start": 1}


def _logits(server, **params) -> httpx.Response:
    body = {"model": TINY_MODEL_NAME, "sequences": [SEQUENCE], "format": "binary-lossless", "top_k": 5, **params}
    return httpx.post(server.http_url + "/v1/logits", json=body, timeout=60)


def _generate(server, **params) -> httpx.Response:
    body = {"model": TINY_MODEL_NAME, "prompts": [{"token_ids": [5, 6, 7]}], "max_new_tokens": 4, **params}
    return httpx.post(server.http_url + "/v1/generate", json=body, timeout=60)


def _refused(response: httpx.Response, field: str) -> bool:
    if response.status_code != 422:
        return False
    error = response.json()["error"]
    return error["code"] == "INVALID_ARGUMENT" and error["field"] == field


@pytest.mark.parametrize("temperature", [1e-40, 1e-38, 1e-30, 1e-6, 3e38])
@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_extreme_temperatures_give_a_distribution_or_422(tiny_server, temperature, mode) -> None:
    response = _logits(tiny_server, temperature=temperature, mode=mode, samples=16)
    if _refused(response, "temperature"):
        return
    assert response.status_code == 200, response.text
    (result,) = wire.decode(response.content)
    values = np.concatenate([result.top_logprobs, result.token_logprobs, result.tail_logprobs])
    assert not np.isnan(values).any(), f"NaN logprobs at temperature {temperature}: {result}"
    assert (result.top_logprobs <= 0).all()
    offsets = result.row_offsets
    for r in range(result.num_rows):  # each row + its tail is a whole distribution: mass 1
        row = result.top_logprobs[offsets[r] : offsets[r + 1]]
        assert np.all(row[:-1] >= row[1:]), "rows are sorted by logprob, descending"
        mass = np.logaddexp(np.logaddexp.reduce(row.astype(np.float64)), result.tail_logprobs[r])
        assert abs(mass) < 1e-3, f"row {r} has probability mass {np.exp(mass)}"
    if temperature <= 1e-30:  # the limit is greedy: the argmax of the temperature-1 distribution, surely
        (reference,) = wire.decode(_logits(tiny_server, temperature=1.0).content)
        tops = result.top_ids[offsets[:-1]]
        np.testing.assert_array_equal(tops, reference.top_ids[reference.row_offsets[:-1]])


@pytest.mark.parametrize("top_p", [1e-50, 1e-45, 5e-324])
def test_a_top_p_that_rounds_to_zero_is_refused_or_served(tiny_server, top_p) -> None:
    response = _generate(tiny_server, top_p=top_p)
    assert _refused(response, "top_p") or response.status_code == 200, response.text


@pytest.mark.parametrize("temperature", [1e-40, 1e-38])
def test_a_vanishing_generation_temperature_is_greedy_or_refused(tiny_server, temperature) -> None:
    greedy = _generate(tiny_server, temperature=0.0).json()["completions"][0]["token_ids"]
    response = _generate(tiny_server, temperature=temperature, seed=3)
    if _refused(response, "temperature"):
        return
    assert response.status_code == 200, response.text
    assert response.json()["completions"][0]["token_ids"] == greedy


def _non_json_lines(server) -> list[str]:
    import json

    bad = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    return bad


@pytest.mark.parametrize("value", [1e39, -1e39, 1e300])
def test_a_temperature_beyond_float32_is_refused_with_json_logs_only(tiny_server, value) -> None:
    """Rounding 1e39 to float32 overflows; numpy used to print a two-line RuntimeWarning into the JSON log."""
    assert _refused(_logits(tiny_server, temperature=value), "temperature")
    assert _refused(_generate(tiny_server, temperature=value), "temperature")
    assert _refused(_generate(tiny_server, top_p=value), "top_p")
    assert not _non_json_lines(tiny_server), _non_json_lines(tiny_server)[:4]
