"""The `openai` Python SDK (PyPI `openai`) against /v1/completions and /v1/models: its request building,
its response parsing (pydantic models of its own), its error classes."""

from __future__ import annotations

import math

import pytest

from tests.compat.conftest import reference_logprobs

openai = pytest.importorskip("openai", reason="needs PyPI `openai`")
PROMPT = [5, 60, 70, 80, 90]


@pytest.fixture()
def sdk(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.http_url + "/v1", api_key="any-key-when-keys-are-off", max_retries=0)
    yield client
    client.close()


def test_prompt_logprobs_through_extra_body(sdk, tiny_model) -> None:
    completion = sdk.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, temperature=0,
                                        extra_body={"prompt_logprobs": 2})
    (choice,) = completion.choices
    entries = choice.model_extra["prompt_logprobs"]  # vLLM's extension field, kept by the SDK
    reference = reference_logprobs(tiny_model, PROMPT)
    assert entries[0] is None
    for i in range(1, len(PROMPT)):
        actual = entries[i][str(PROMPT[i])]
        assert math.isclose(actual["logprob"], reference[i - 1][PROMPT[i]], abs_tol=2e-5)
    assert completion.usage.prompt_tokens == len(PROMPT)
    assert [model.id for model in sdk.models.list()] == ["tiny"]


def test_echo_logprobs_parse_into_the_sdk_types(sdk) -> None:
    completion = sdk.completions.create(model="tiny", prompt=[PROMPT, PROMPT[:3]], max_tokens=0, echo=True, logprobs=1)
    assert [c.index for c in completion.choices] == [0, 1]
    logprobs = completion.choices[1].logprobs
    assert len(logprobs.tokens) == 3 and logprobs.token_logprobs[0] is None and logprobs.text_offset[0] == 0


def test_errors_are_the_sdks_typed_errors(sdk) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 999})
    assert "greater than max allowed: 320" in info.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="missing", prompt=PROMPT, max_tokens=1)
