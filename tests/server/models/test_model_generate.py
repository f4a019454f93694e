"""ServedModel.generate: greedy against a manual argmax loop, n / seed behaviour, stops, chat prompts."""

from __future__ import annotations

import pytest
import torch

from dualdistill_server.models import load_model
from dualdistill_server.models.generation import draw, nucleus_probs
from tests.fixtures.tiny_model import CHAT_TEMPLATE


def _manual_greedy(model, prompt: list[int], steps: int, stop_ids: set[int]) -> list[int]:
    """Independent reference: full forward on the growing sequence, argmax of the last row, no cache."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(torch.argmax(model(torch.tensor([ids])).logits[0, -1]))
            out.append(token)
            ids.append(token)
            if token in stop_ids:
                break
    return out


def _prompts(tiny) -> list[list[int]]:
    return [
        tiny.encode_text("The quick brown fox"),
        tiny.encode_text("What is 12 plus 30? The answer is"),
        tiny.encode_text("7"),
    ]


def test_greedy_equals_manual_argmax_loop(tiny) -> None:
    prompts = _prompts(tiny)
    completions = tiny.generate(prompts, max_new_tokens=12, temperature=0.0, top_p=1.0, n=2, seed=0)
    assert [c.prompt_index for c in completions] == [0, 0, 1, 1, 2, 2]
    references = [_manual_greedy(tiny.model, prompt, 12, tiny.stop_ids) for prompt in prompts]
    for c in completions:
        expected = references[c.prompt_index]
        assert c.prompt_token_ids == prompts[c.prompt_index]
        assert c.token_ids == expected
        assert c.finish_reason == ("stop" if expected[-1] in tiny.stop_ids else "length")
        assert c.text == tiny.decode(c.token_ids)


def test_stop_token_ends_a_completion(tiny_dir) -> None:
    model = load_model("tiny-stop", str(tiny_dir))
    prompt = model.encode_text("The quick brown fox")
    greedy = _manual_greedy(model.model, prompt, 5, set())
    model.stop_ids = {greedy[2]}  # make the third greedy token a stop token
    (c,) = model.generate([prompt], max_new_tokens=5, temperature=0.0, top_p=1.0, n=1, seed=0)
    cut = greedy.index(greedy[2]) + 1
    assert c.token_ids == greedy[:cut] and c.finish_reason == "stop"


def test_seed_and_n(tiny) -> None:
    prompts = _prompts(tiny)[:2]
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_p=1.0, n=3)
    first = tiny.generate(prompts, seed=5, **kwargs)
    again = tiny.generate(prompts, seed=5, **kwargs)
    other = tiny.generate(prompts, seed=6, **kwargs)
    assert [c.prompt_index for c in first] == [0, 0, 0, 1, 1, 1]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert len({tuple(c.token_ids) for c in first[:3]}) > 1, "the n samples of a prompt should differ"
    assert all(len(c.token_ids) == 10 or c.finish_reason == "stop" for c in first)
    # A prompt's completions depend on (seed, prompt, sample index), not on the other prompts.
    alone = tiny.generate([prompts[1]], seed=5, **kwargs)
    assert [c.token_ids for c in alone] == [c.token_ids for c in first[3:]]


def test_tiny_top_p_is_greedy(tiny) -> None:
    prompts = _prompts(tiny)
    greedy = tiny.generate(prompts, max_new_tokens=6, temperature=0.0, top_p=1.0, n=1, seed=0)
    nucleus = tiny.generate(prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6, n=1, seed=9)
    assert [c.token_ids for c in greedy] == [c.token_ids for c in nucleus]


def test_length_limits(tiny) -> None:
    (c,) = tiny.generate([[5, 6]], max_new_tokens=0, temperature=1.0, top_p=1.0, n=1, seed=0)
    assert c.token_ids == [] and c.finish_reason == "length"
    near_end = [7] * (tiny.info.max_seq_len - 2)
    (c,) = tiny.generate([near_end], max_new_tokens=10, temperature=0.0, top_p=1.0, n=1, seed=0)
    assert len(c.token_ids) <= 2 and (len(c.token_ids) == 2 or c.finish_reason == "stop")
    with pytest.raises(ValueError, match="prompts\\[0\\]"):
        tiny.generate([[7] * tiny.info.max_seq_len], max_new_tokens=1, temperature=0.0, top_p=1.0, n=1, seed=0)
    with pytest.raises(ValueError, match="top_p"):
        tiny.generate([[5]], max_new_tokens=1, temperature=1.0, top_p=0.0, n=1, seed=0)


def test_chat_prompt_uses_the_template(tiny) -> None:
    messages = [{"role": "user", "content": "What is 7 times 6?"}]
    ids = tiny.encode_chat(messages)
    expected_text = "<|im_start|>user\nWhat is 7 times 6?<|im_end|>\n<|im_start|>assistant\n"
    assert tiny.tokenizer.decode(ids) == expected_text
    assert ids[0] == tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids == tiny.tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="role"):
        tiny.encode_chat([{"content": "no role"}])
    assert CHAT_TEMPLATE == tiny.tokenizer.chat_template


def test_model_without_chat_template_says_so(tiny_dir) -> None:
    model = load_model("plain", str(tiny_dir))
    model.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        model.encode_chat([{"role": "user", "content": "hi"}])


def test_nucleus_and_draw_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = nucleus_probs(logits, 1.0, 0.7)  # 0.5 < 0.7, 0.5 + 0.3 crosses 0.7 -> {0, 1}
    assert torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.0, 0.0]]), atol=1e-6)
    # cdf of the kept mass (0.8): [0.5, 0.8]; u * 0.8 below 0.5 -> id 0, above -> id 1.
    assert draw(kept.repeat(2, 1), torch.tensor([0.6, 0.7])).tolist() == [0, 1]
