"""Scorer specs, the verifier and reward-model scorers, and the local (in-process) student source."""

from __future__ import annotations

import asyncio
import math

import pytest

from dualdistill.client.types import Completion
from dualdistill.pairs.scorers import ScorerSpecError, VerifierScorer, load_callable, make_scorer
from tests.fixtures.tiny_model import build_tiny_model


def _completion(text: str, tokens: list[int] | None = None) -> Completion:
    return Completion(0, [1, 2], [5, 6] if tokens is None else tokens, text, "stop")


def test_bad_specs_name_the_valid_forms(tmp_path):
    with pytest.raises(ScorerSpecError, match="teacher-logprob, verifier:MODULE:FUNCTION, reward-model:PATH"):
        make_scorer("bleu")
    with pytest.raises(ScorerSpecError, match="needs a teacher client"):
        make_scorer("teacher-logprob")
    with pytest.raises(ScorerSpecError, match="MODULE:FUNCTION"):
        make_scorer("verifier:nomodule")
    with pytest.raises(ScorerSpecError, match="cannot import"):
        make_scorer("verifier:no_such_module_xyz:f")
    with pytest.raises(ScorerSpecError, match="no callable 'nope'"):
        make_scorer("verifier:dualdistill.tasks.arithmetic:nope")
    with pytest.raises(ScorerSpecError, match="does not exist"):
        make_scorer(f"verifier:{tmp_path}/missing.py:f")
    with pytest.raises(ScorerSpecError, match="not a directory"):
        make_scorer(f"reward-model:{tmp_path}/missing")


def test_arithmetic_verifier_by_spec():
    scorer = make_scorer("verifier:dualdistill.tasks.arithmetic:verify")
    assert scorer.name == "verifier:dualdistill.tasks.arithmetic:verify"
    query = {"id": 1, "prompt": "2 + 3?", "answer": 5}
    completions = [_completion("It is 5."), _completion("It is 6."), _completion("", tokens=[])]
    scores = scorer.score(query, completions)
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2])  # no tokens: never scored
    assert asyncio.run(scorer.ascore(query, completions))[:2] == [1.0, 0.0]


def test_verifier_from_a_file_sync_and_async(tmp_path):
    (tmp_path / "my_verifier.py").write_text(
        "async def by_length(query, response):\n    return len(response)\n"
        "def bad(query, response):\n    return 'high'\n"
    )
    scorer = make_scorer(f"verifier:{tmp_path}/my_verifier.py:by_length")
    assert scorer.score({"id": 1, "prompt": "p"}, [_completion("abc"), _completion("a")]) == [3.0, 1.0]
    bad = VerifierScorer(load_callable(f"{tmp_path}/my_verifier.py:bad"), "verifier:bad")
    with pytest.raises(TypeError, match="must return a number"):
        bad.score({"id": 1, "prompt": "p"}, [_completion("abc")])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("student"), num_layers=1, seed=1)


def test_reward_model_scorer_equals_in_process_forward(tmp_path, tiny_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = LlamaConfig.from_pretrained(tiny_dir)
    config.num_labels = 2
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")

    scorer = make_scorer(f"reward-model:{tmp_path / 'rm'}")
    query = {"id": 1, "prompt": "What is 7 times 6?"}
    responses = ["The answer is 42.", "0 1 2 3"]
    scores = scorer.score(query, [_completion(r) for r in responses])
    model = LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    for response, score in zip(responses, scores, strict=True):
        # the chat template of the fixture: user turn, then the response as the assistant turn
        text = f"<|im_start|>user\n{query['prompt']}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>\n"
        with torch.no_grad():
            expected = model(**tokenizer(text, return_tensors="pt")).logits[0, -1].item()
        assert score == pytest.approx(expected, abs=1e-5)
    assert scores[0] != scores[1]


def test_local_source_conventions_and_determinism(tiny_dir):
    from dualdistill.pairs.sources import LocalSource

    source = LocalSource(tiny_dir)
    prompt = source.prompt_ids([{"role": "user", "content": "What is 12 plus 30?"}])
    assert source.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    kwargs = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0}
    a = source.generate(prompt, 3, seed=11, **kwargs)
    b = asyncio.run(source.agenerate(prompt, 3, seed=11, **kwargs))
    assert a == b and len(a) == 3
    assert source.generate(prompt, 3, seed=12, **kwargs) != a
    for c in a:
        assert c.prompt_token_ids == prompt and 1 <= len(c.token_ids) <= 12
        stopped = c.token_ids[-1] in source.stop_ids
        assert c.finish_reason == ("stop" if stopped else "length")
        assert not any(t in source.stop_ids for t in c.token_ids[:-1])
        assert c.text == source.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert len(source.fingerprint) == 16 and len(source.tokenizer_sha256) == 64
