"""/v1/generate refusals that must be 422 with the field named, never 500: the prompts x n x max_new_tokens
bound (max_generate_tokens), a chat prompt for a model without a chat template, a template that refuses
the turns, and malformed messages. In process: the ASGI app over a real TeacherService and tiny model."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dualdistill_server.config import ServerConfig
from dualdistill_server.core import TeacherService
from dualdistill_server.http import create_app

CHAT = [{"role": "user", "content": "What is 12 plus 30?"}]


@pytest.fixture(scope="module")
def own_model(tiny_model_dir):
    """A separate load of the tiny model: these tests change its tokenizer's chat template."""
    from dualdistill_server.models import load_model

    return load_model("tiny", str(tiny_model_dir), device="cpu", dtype="float32", max_seq_len=256, max_top_k=512)


def _post_all(model, bodies: list[dict], **config) -> list[httpx.Response]:
    settings = ServerConfig(max_generate_tokens=100, **config)

    async def main():
        service = TeacherService({"tiny": model}, settings)
        transport = httpx.ASGITransport(app=create_app(service, settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = [await client.post("/v1/generate", json=body) for body in bodies]
        await service.close()
        return out

    return asyncio.run(main())


def _generate(prompts: list[dict], **fields) -> dict:
    return {"model": "tiny", "prompts": prompts, "max_new_tokens": 4, "temperature": 0, **fields}


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 422, response.text
    return response.json()["error"]


def test_generate_budget_is_prompts_times_n_times_max_new_tokens(own_model) -> None:
    over, at_limit = _post_all(own_model, [
        _generate([{"text": "a"}, {"text": "b"}], n=3, max_new_tokens=17),  # 2 x 3 x 17 = 102 > 100
        _generate([{"text": "a"}, {"text": "b"}], n=2, max_new_tokens=25),  # 2 x 2 x 25 = 100
    ])
    error = _error(over)
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "max_new_tokens"
    assert "2 x 3 x 17 = 102" in error["message"] and "max_generate_tokens = 100" in error["message"]
    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["completions"]) == 4


def test_chat_prompt_errors_are_422_naming_the_messages(own_model) -> None:
    template = own_model.tokenizer.chat_template
    try:
        own_model.tokenizer.chat_template = None
        (no_template,) = _post_all(own_model, [_generate([{"text": "ok"}, {"messages": CHAT}])])
        own_model.tokenizer.chat_template = "{{ raise_exception('only system turns, please') }}"
        (refused,) = _post_all(own_model, [_generate([{"messages": CHAT}])])
    finally:
        own_model.tokenizer.chat_template = template
    missing_role, empty_role, works = _post_all(own_model, [
        _generate([{"messages": [{"content": "hi"}]}]),
        _generate([{"messages": [{"role": "", "content": "hi"}]}]),
        _generate([{"messages": CHAT}]),
    ])
    error = _error(no_template)
    assert error["field"] == "prompts[1].messages" and "no chat template" in error["message"]
    error = _error(refused)
    assert error["field"] == "prompts[0].messages" and "only system turns" in error["message"]
    assert _error(missing_role)["field"] == "prompts[0].messages[0].role"
    assert _error(empty_role)["field"] == "prompts[0].messages[0].role"
    assert works.status_code == 200, works.text
