"""Units of both directions without a server: vLLM's logprob shapes from SequenceLogits (order, ranks,
-inf clamping), the translation of vLLM's answers back into SequenceLogits, the limit probes and the
tokenizer check driven with canned answers (sans-IO steps), and URL parsing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dualdistill.client.endpoint import parse_endpoint
from dualdistill.client.errors import TeacherServiceError, TokenizerMismatchError
from dualdistill.client.handshake_openai import PROBE_TEXTS, Answers, handshake_steps
from dualdistill.client.openai_steps import probe_limits, sequence_logits
from dualdistill.client.operations import _models_from_json
from dualdistill.client.types import ModelInfo
from dualdistill.protocol.results import SequenceLogits


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _run(steps, answer_of):
    """Drive sans-IO steps: `answer_of(call)` answers each call; returns the steps' result."""
    try:
        call = next(steps)
        while True:
            call = steps.send(answer_of(call))
    except StopIteration as done:
        return done.value


def test_entries_put_the_actual_token_first_and_clamp_minus_inf(tokenizer) -> None:
    from dualdistill_server.http.openai_compat import logprobs as shapes
    from dualdistill_server.http.openai_compat.tokens import TokenTexts

    texts = TokenTexts(tokenizer)
    token_ids = [5, 60, 70]
    # row 0: actual 60 outside the top 2 (rank 9); row 1: actual 70 is the top-1; a -inf in the row
    result = SequenceLogits.from_dense(
        np.array([[7, 8], [70, 9]]), np.array([[-0.1, -2.0], [-0.01, -np.inf]], dtype=np.float32),
        np.array([-np.inf, -0.01], dtype=np.float32), np.array([-3.0, -np.inf], dtype=np.float32),
    )
    result.token_ranks = np.array([9, 1])
    entries = shapes.entries(result, token_ids, 1, 2, texts, with_ranks=True)
    assert list(entries[0].logprobs) == [60, 7, 8] and entries[0].logprobs[60] == (-math.inf, 9)
    assert list(entries[1].logprobs) == [70, 9] and entries[1].logprobs[70][1] == 1  # K entries, not K + 1
    body = shapes.prompt_logprobs_json([None, *entries])
    assert body[0] is None and body[1]["60"]["logprob"] == -9999.0 and body[2]["9"]["logprob"] == -9999.0
    block = shapes.legacy_logprobs(token_ids, [None, *entries], 1, texts, as_token_ids=True)
    assert block["token_logprobs"] == [None, -9999.0, pytest.approx(-0.01)]
    assert list(block["top_logprobs"][1]) == ["token_id:60", "token_id:7"]  # the first N + 1 = 2 items
    assert block["text_offset"] == [0, 10, 21]


def test_vllm_entries_become_sequence_logits() -> None:
    entries = [None, {"9": {"logprob": -5.0, "rank": 7, "decoded_token": "x"},
                      "4": {"logprob": -2.0, "rank": 2, "decoded_token": "a"},
                      "3": {"logprob": -1.0, "rank": 1, "decoded_token": "b"}},
               {"4": {"logprob": -0.1, "rank": 1, "decoded_token": "a"},
                "6": {"logprob": -9999.0, "rank": 2, "decoded_token": "c"}}]
    result = sequence_logits(entries, [1, 9, 4], 1, 2)
    ids, logprobs, _ = result.dense()
    assert ids.tolist() == [[3, 4], [4, 6]] and logprobs[1, 1] == -np.inf
    assert result.token_ranks.tolist() == [7, 1]
    assert result.token_logprobs.tolist() == [-5.0, pytest.approx(-0.1)]
    mass = math.exp(-1.0) + math.exp(-2.0)
    assert result.tail_logprobs[0] == pytest.approx(math.log1p(-mass), rel=1e-5)


def test_limit_probes_read_vllms_messages() -> None:
    capped = {"error": {"message": "Requested prompt logprobs of 320, which is greater than max allowed: 20 "
                                   "(parameter=prompt_logprobs, value=320)", "code": 400}}
    assert _run(probe_limits("m"), lambda call: capped) == (320, 20)
    answers = iter([{"choices": []}, {"error": {"message": "Requested prompt logprobs of 2147483647, which is "
                                                "greater than max allowed: 320 (parameter=prompt_logprobs)"}}])
    assert _run(probe_limits("m"), lambda call: next(answers)) == (320, 320)  # --max-logprobs -1


def _served_answers(tokenizer, tokenizer_info: dict | None):
    def answer(call):
        if call.path == "/tokenizer_info":
            return tokenizer_info if tokenizer_info is not None else {"status": 404, "error": {}}
        if call.path == "/tokenize":
            return {"tokens": tokenizer.encode(call.body["prompt"], add_special_tokens=False)}
        if call.path == "/detokenize":
            return {"prompt": tokenizer.decode(call.body["tokens"])}
        raise AssertionError(call)

    return answer


def test_tokenizer_check_against_what_vllm_exposes(tokenizer) -> None:
    info = ModelInfo(name="tiny", vocab_size=320, tokenizer_sha256="", max_seq_len=256, max_top_k=20)
    served_info = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                   "added_tokens_decoder": {str(i): t.content for i, t in tokenizer.added_tokens_decoder.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the full check passes silently
        assert _run(handshake_steps(tokenizer, info, Answers()), _served_answers(tokenizer, served_info)) is info
    with pytest.warns(UserWarning, match="weaker check"):
        _run(handshake_steps(tokenizer, info, Answers()), _served_answers(tokenizer, None))
    wrong = dict(served_info, eos_token="<|endoftext|>")
    with pytest.raises(TokenizerMismatchError, match="eos_token differs"):
        _run(handshake_steps(tokenizer, info, Answers()), _served_answers(tokenizer, wrong))

    def shifted(call):
        answer = _served_answers(tokenizer, served_info)(call)
        return {"tokens": [t + 1 for t in answer["tokens"]]} if call.path == "/tokenize" else answer

    with pytest.raises(TokenizerMismatchError, match="tokenizes differently"):
        _run(handshake_steps(tokenizer, info, Answers()), shifted)
    small = ModelInfo(name="tiny", vocab_size=100, tokenizer_sha256="", max_seq_len=256, max_top_k=20)
    with pytest.raises(TokenizerMismatchError, match="scores only 100 ids"):
        _run(handshake_steps(tokenizer, small, Answers()), _served_answers(tokenizer, served_info))
    assert len(PROBE_TEXTS) >= 5


def test_urls_and_the_plain_http_mistake() -> None:
    assert parse_endpoint("openai+http://h:8000/").address == "http://h:8000"
    assert parse_endpoint("openai+https://h").transport == "openai"
    assert parse_endpoint("h:8000", "openai").address == "http://h:8000"
    with pytest.raises(ValueError, match="is a openai address"):
        parse_endpoint("openai+http://h:1", "grpc")
    with pytest.raises(TeacherServiceError, match="use openai\\+http://HOST:PORT"):
        _models_from_json({"object": "list", "data": [{"id": "m", "object": "model"}]})


def test_the_trainer_accepts_a_vllm_teacher_url() -> None:
    from dualdistill.trainer.config import TrainConfig

    config = TrainConfig(student="s", pairs="p.jsonl", teacher_url="openai+http://127.0.0.1:8000", output_dir="o")
    assert config.validate().teacher_url == "openai+http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="openai\\+http"):
        TrainConfig(student="s", pairs="p.jsonl", teacher_url="ftp://x", output_dir="o").validate()
