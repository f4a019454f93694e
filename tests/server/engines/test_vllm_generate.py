"""Generation through vLLM: greedy equals the hf engine, seeded rows, budgets, stops, continuous batching."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dualdistill_server.engines.vllm.model import VllmModel
from tests.server.engines.conftest import requires_vllm

pytestmark = requires_vllm
PROMPTS = [[1, 50, 60], [1, 70], [1, 200, 13, 99, 7]]


def _ids(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


def test_greedy_equals_the_hf_engine(vllm_tiny, hf_tiny) -> None:
    args = {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "n": 2, "seed": 0}
    ours, reference = vllm_tiny.generate(PROMPTS, **args), hf_tiny.generate(PROMPTS, **args)
    assert [c.prompt_index for c in ours] == [0, 0, 1, 1, 2, 2]
    assert _ids(ours) == _ids(reference)
    assert [c.text for c in ours] == [c.text for c in reference]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for c in ours)
    assert ours[2].prompt_token_ids == PROMPTS[1]


def test_sampling_is_seeded_per_row(vllm_tiny) -> None:
    args = {"max_new_tokens": 16, "temperature": 1.5, "top_p": 0.95, "n": 3}
    first = vllm_tiny.generate(PROMPTS[:2], seed=7, **args)
    assert _ids(vllm_tiny.generate(PROMPTS[:2], seed=7, **args)) == _ids(first)
    alone = vllm_tiny.generate(PROMPTS[1:2], seed=7, **args)  # a row depends on (seed, prompt, j) only
    assert _ids(alone) == _ids(first)[3:]
    assert len({tuple(ids) for ids in _ids(first)[:3]}) > 1, "the n samples of one prompt should differ"
    assert _ids(vllm_tiny.generate(PROMPTS[:2], seed=8, **args)) != _ids(first)


def test_budgets_and_stop_tokens(vllm_tiny, hf_tiny) -> None:
    (empty,) = vllm_tiny.generate(PROMPTS[:1], max_new_tokens=0, temperature=1.0, top_p=1.0, n=1, seed=0)
    assert empty.token_ids == [] and empty.finish_reason == "length"
    long_prompt = [1] + [50] * 250  # max_seq_len 256: room for 5 tokens
    (capped,) = vllm_tiny.generate([long_prompt], max_new_tokens=50, temperature=0.0, top_p=1.0, n=1, seed=0)
    assert len(capped.token_ids) == 5 and capped.finish_reason == "length"
    greedy = vllm_tiny.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, top_p=1.0, n=1, seed=0)[0]
    stop = greedy.token_ids[3]  # make the 4th greedy token an end token
    stopping = VllmModel("tiny", vllm_tiny._loop, vllm_tiny.tokenizer, vllm_tiny.info, stop_ids={stop})
    (done,) = stopping.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, top_p=1.0, n=1, seed=0)
    first = greedy.token_ids.index(stop)
    assert done.token_ids == greedy.token_ids[: first + 1] and done.finish_reason == "stop"


def test_concurrent_requests_share_engine_steps(vllm_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuous batching: requests from several threads are in the engine at the same time, and each
    gets the same completions as alone."""
    engine = vllm_tiny._loop.engine
    together: list[int] = []
    step = engine.step

    def counting_step():
        together.append(engine.get_num_unfinished_requests())
        return step()

    args = {"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "n": 1}
    alone = [_ids(vllm_tiny.generate([p], seed=i, **args)) for i, p in enumerate(PROMPTS)]
    monkeypatch.setattr(engine, "step", counting_step)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda i: _ids(vllm_tiny.generate([PROMPTS[i]], seed=i, **args)), range(3)))
    assert concurrent == alone
    assert max(together) == len(PROMPTS), f"requests were never in the engine together: {together}"
