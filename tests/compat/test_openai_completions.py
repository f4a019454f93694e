"""POST /v1/completions (vLLM's OpenAI-compatible dialect) on the real `tiny_server` process: shapes, order
and ranks of prompt_logprobs, echo + logprobs, generation, vLLM's errors, /v1/models, /health, metrics.

Every number is compared with a plain forward of the tiny model in this process (conftest.py)."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest

from tests.compat.conftest import reference_logprobs, reference_rank

PROMPT = [5, 60, 70, 80, 90, 101, 7]
ATOL = 2e-5


def post(server, body: dict, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(server.http_url + path, json=body, timeout=60)


def test_prompt_logprobs_are_vllms_dicts_with_true_ranks(tiny_server, tiny_model) -> None:
    k = 3
    answer = post(tiny_server, {"model": "tiny", "prompt": PROMPT, "prompt_logprobs": k, "max_tokens": 1,
                                "temperature": 0, "a_field_vllm_does_not_know": 1}).json()
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
    (choice,) = answer["choices"]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(PROMPT) and entries[0] is None
    reference = reference_logprobs(tiny_model, PROMPT)
    for i in range(1, len(PROMPT)):
        row, entry = reference[i - 1], entries[i]
        keys = [int(key) for key in entry]
        assert keys[0] == PROMPT[i], "the actual token comes first"
        top = np.argsort(-row, kind="stable")[:k].tolist()
        assert set(keys[1:]) | {keys[0]} == set(top) | {PROMPT[i]}
        assert len(entry) == (k if PROMPT[i] in top else k + 1)
        actual = entry[str(PROMPT[i])]
        expected_rank = top.index(PROMPT[i]) + 1 if PROMPT[i] in top else reference_rank(row, PROMPT[i])
        assert actual["rank"] == expected_rank
        assert math.isclose(actual["logprob"], row[PROMPT[i]], abs_tol=ATOL)
        others = [(int(t), v) for t, v in entry.items() if int(t) != PROMPT[i] or PROMPT[i] in top]
        ranked = sorted(others, key=lambda item: item[1]["rank"])
        assert [t for t, _ in ranked] == top and [v["rank"] for _, v in ranked] == [1, 2, 3]
        assert all(isinstance(v["decoded_token"], str) for v in entry.values())
    assert answer["usage"]["prompt_tokens"] == len(PROMPT) and answer["usage"]["completion_tokens"] == 1


def test_a_batch_of_prompts_and_a_text_prompt(tiny_server, tiny_model) -> None:
    batch = [PROMPT, PROMPT[:3], [9, 12]]
    answer = post(tiny_server, {"model": "tiny", "prompt": batch, "prompt_logprobs": 0, "max_tokens": 1}).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    for ids, choice in zip(batch, answer["choices"], strict=True):
        reference = reference_logprobs(tiny_model, ids)
        assert len(choice["prompt_logprobs"]) == len(ids)
        for i in range(1, len(ids)):
            (only,) = choice["prompt_logprobs"][i].items()  # prompt_logprobs 0: the actual token alone
            assert int(only[0]) == ids[i] and math.isclose(only[1]["logprob"], reference[i - 1][ids[i]], abs_tol=ATOL)
    text = post(tiny_server, {"prompt": "The quick brown fox", "echo": True, "max_tokens": 0, "logprobs": 1,
                              "return_token_ids": True}).json()["choices"][0]
    ids = tiny_model.tokenizer.encode("The quick brown fox")
    assert text["prompt_token_ids"] == ids and text["text"] == ""  # return_token_ids blanks the echo, as in vLLM


def test_echo_with_logprobs_and_no_generation(tiny_server, tiny_model) -> None:
    answer = post(tiny_server, {"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": 0})
    (choice,) = answer.json()["choices"]
    block = choice["logprobs"]
    assert choice["text"] == tiny_model.tokenizer.decode(PROMPT)
    assert block["token_logprobs"][0] is None and block["top_logprobs"][0] is None
    reference = reference_logprobs(tiny_model, PROMPT)
    np.testing.assert_allclose(block["token_logprobs"][1:], [reference[i - 1][PROMPT[i]] for i in range(1, 7)],
                               atol=ATOL)
    assert all(1 <= len(top) <= 3 for top in block["top_logprobs"][1:])  # N + 1 at most, fewer on text collisions
    lengths = [len(t) for t in block["tokens"]]
    assert block["text_offset"] == [sum(lengths[:i]) for i in range(len(lengths))]
    # echo without prompt_logprobs scores the prompt with `logprobs` (vLLM's rule): both fields are there
    assert len(choice["prompt_logprobs"]) == len(PROMPT)
    as_ids = post(tiny_server, {"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 0, "max_tokens": 0,
                                "return_tokens_as_token_ids": True}).json()["choices"][0]["logprobs"]
    assert as_ids["tokens"] == [f"token_id:{t}" for t in PROMPT]
    assert list(as_ids["top_logprobs"][1]) == [f"token_id:{PROMPT[1]}"]


def test_lm_eval_style_echo_generates_one_token_and_scores_it(tiny_server, tiny_model) -> None:
    body = {"model": "tiny", "prompt": [PROMPT], "temperature": 0, "max_tokens": 1, "logprobs": 1, "echo": True,
            "seed": 1234}
    (choice,) = post(tiny_server, body).json()["choices"]
    block = choice["logprobs"]
    assert len(block["tokens"]) == len(PROMPT) + 1
    greedy = int(np.argmax(reference_logprobs(tiny_model, PROMPT + [0])[-1]))
    full = reference_logprobs(tiny_model, PROMPT + [greedy])
    assert math.isclose(block["token_logprobs"][-1], full[-1][greedy], abs_tol=ATOL)


def test_generation_follows_the_engine_and_its_seed(tiny_server) -> None:
    body = {"model": "tiny", "prompt": [PROMPT, [9, 12]], "max_tokens": 5, "temperature": 0.9, "top_p": 0.95,
            "n": 2, "seed": 7, "logprobs": 2, "return_token_ids": True}
    first, again = post(tiny_server, body).json(), post(tiny_server, body).json()
    assert [c["token_ids"] for c in first["choices"]] == [c["token_ids"] for c in again["choices"]]
    assert len(first["choices"]) == 4 and [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    ours = httpx.post(tiny_server.http_url + "/v1/generate", timeout=60, json={
        "model": "tiny", "prompts": [{"token_ids": PROMPT}, {"token_ids": [9, 12]}], "max_new_tokens": 5,
        "temperature": 0.9, "top_p": 0.95, "n": 2, "seed": 7}).json()["completions"]
    assert [c["token_ids"] for c in first["choices"]] == [c["token_ids"] for c in ours]
    for choice in first["choices"]:
        assert len(choice["logprobs"]["tokens"]) == len(choice["token_ids"])
        assert choice["finish_reason"] in ("stop", "length")
    assert first["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in first["choices"])


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"prompt": PROMPT, "prompt_logprobs": 321}, 400, "prompt_logprobs",
         "Requested prompt logprobs of 321, which is greater than max allowed: 320 "
         "(parameter=prompt_logprobs, value=321)"),
        ({"prompt": PROMPT, "logprobs": 400, "max_tokens": 1}, 400, "logprobs",
         "Requested sample logprobs of 400, which is greater than max allowed: 320 (parameter=logprobs, value=400)"),
        ({"model": "nope", "prompt": PROMPT}, 404, "model", "The model `nope` does not exist. Valid aliases: tiny."),
        ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens",
         "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"),
        ({"prompt": [5, 60, 7000]}, 400, None, "Token id 7000 is out of vocabulary"),
        ({"prompt": PROMPT, "temperature": 3}, 400, "temperature",
         "temperature must be in [0, 2], got 3.0. (parameter=temperature, value=3.0)"),
        ({"prompt": PROMPT, "use_beam_search": True}, 400, "use_beam_search", None),
    ],
)
def test_errors_have_vllms_status_body_and_message(tiny_server, body, status, param, message) -> None:
    response = post(tiny_server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"] and error["code"] == status
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message


def test_prompt_logprobs_minus_one_is_the_whole_vocabulary(tiny_server) -> None:
    answer = post(tiny_server, {"prompt": PROMPT[:3], "prompt_logprobs": -1, "max_tokens": 1}).json()
    assert all(len(entry) == 320 for entry in answer["choices"][0]["prompt_logprobs"][1:])


def test_temperature_is_ignored_on_logprobs_unless_opted_in(tiny_server, tiny_model) -> None:
    body = {"prompt": PROMPT, "prompt_logprobs": 1, "max_tokens": 1, "temperature": 0.5}
    raw = post(tiny_server, body).json()["choices"][0]["prompt_logprobs"]
    scaled = post(tiny_server, {**body, "apply_temperature_to_logprobs": True}).json()["choices"][0]["prompt_logprobs"]
    reference = reference_logprobs(tiny_model, PROMPT)
    assert math.isclose(raw[1][str(PROMPT[1])]["logprob"], reference[0][PROMPT[1]], abs_tol=ATOL)
    import torch

    with torch.inference_mode():
        logits = tiny_model.model(torch.tensor([PROMPT])).logits[0, :-1].float()
    at_half = torch.log_softmax(logits / 0.5, dim=-1).numpy()
    assert math.isclose(scaled[1][str(PROMPT[1])]["logprob"], at_half[0][PROMPT[1]], abs_tol=1e-4)


def test_models_health_and_per_dialect_metrics(tiny_server, tiny_model) -> None:
    models = httpx.get(tiny_server.http_url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == 256
    assert models["models"] == [tiny_model.info.to_dict()]  # today's fields stay for our own client
    for path in ("/health", "/health/"):
        assert httpx.get(tiny_server.http_url + path, timeout=10).status_code == 200
    post(tiny_server, {"prompt": PROMPT, "prompt_logprobs": 1, "max_tokens": 1})
    text = httpx.get(tiny_server.http_url + "/metrics", timeout=10).text
    assert 'dualdistill_dialect_requests_total{code="OK",dialect="openai"}' in text


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_prompt_scoring_shares_the_result_cache(tiny_server) -> None:
    body = {"prompt": [11, 12, 13, 14, 15, 16], "prompt_logprobs": 4, "max_tokens": 1, "temperature": 0}
    first = post(tiny_server, body).json()["choices"][0]["prompt_logprobs"]
    hits = _metric(httpx.get(tiny_server.http_url + "/metrics", timeout=10).text, "dualdistill_cache_hits_total")
    again = post(tiny_server, body).json()["choices"][0]["prompt_logprobs"]
    after = _metric(httpx.get(tiny_server.http_url + "/metrics", timeout=10).text, "dualdistill_cache_hits_total")
    assert again == first and after >= hits + 1  # ranks included: they are cached with the rows


def test_tenants_keys_guard_the_compatible_routes(tiny_model_dir, tmp_path) -> None:
    from tests.fixtures.server_process import start_server

    key_file = tmp_path / "keys"
    key_file.write_text("alice:sk-alice-3f9a2c71d04e8b6\n")
    with start_server({"tiny": tiny_model_dir}, "--api-key-file", str(key_file)) as server:
        body = {"prompt": PROMPT, "prompt_logprobs": 1, "max_tokens": 1}
        refused = httpx.post(server.http_url + "/v1/completions", json=body, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "Unauthorized"
        trl_body = {"sequences": [PROMPT], "prompt_lengths": [2], "top_logprobs": 1}
        assert httpx.post(server.http_url + "/get_sequence_logprobs/", json=trl_body, timeout=30).status_code == 401
        assert httpx.get(server.http_url + "/health", timeout=30).status_code == 200  # probes stay open
        key = {"authorization": "Bearer sk-alice-3f9a2c71d04e8b6"}
        assert httpx.post(server.http_url + "/v1/completions", json=body, headers=key, timeout=30).status_code == 200
        ok = httpx.post(server.http_url + "/get_sequence_logprobs/", json=trl_body, headers=key, timeout=30)
        assert ok.status_code == 200
        metrics = httpx.get(server.http_url + "/metrics", timeout=30).text
        assert 'dialect_requests_total{code="UNAUTHENTICATED",dialect="trl"}' in metrics
