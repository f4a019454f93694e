"""lm-evaluation-harness (PyPI `lm-eval`) runs a loglikelihood task on local data against the service with its
`local-completions` model (echo + logprobs, max_tokens 1, token-id prompts), and every loglikelihood it
reports equals the tiny model's own, computed in this process."""

from __future__ import annotations

import json
import math

import pytest

from tests.compat.conftest import reference_logprobs

pytest.importorskip("lm_eval", reason="needs PyPI `lm-eval`")
DOCS = [
    {"question": "What is 12 plus 30?", "choices": ["42", "24", "The answer"], "answer": 0},
    {"question": "The quick brown", "choices": ["fox", "dog", "teacher model"], "answer": 0},
    {"question": "Students learn from", "choices": ["positives", "negatives and more"], "answer": 1},
]


def task_config(data_file: str) -> dict:
    return {
        "task": "dualdistill_local_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}],
    }


def test_local_completions_loglikelihoods_equal_in_process(tiny_server, tiny_model, tiny_model_dir, tmp_path,
                                                           monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    data_file = tmp_path / "docs.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    lm = LocalCompletionsAPI(
        base_url=tiny_server.http_url + "/v1/completions", model="tiny", tokenizer=str(tiny_model_dir),
        tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=1, max_retries=1, batch_size=4,
    )
    results = lm_eval.simple_evaluate(model=lm, tasks=[task_config(str(data_file))], log_samples=True,
                                      bootstrap_iters=0)
    samples = results["samples"]["dualdistill_local_mc"]
    assert len(samples) == len(DOCS)
    checked = 0
    for sample in samples:
        doc = sample["doc"]
        for choice, response in zip(doc["choices"], sample["resps"], strict=True):
            loglikelihood, is_greedy = response[0]
            context, continuation = lm._encode_pair(doc["question"], " " + choice)
            sequence = context + continuation
            reference = reference_logprobs(tiny_model, sequence)
            expected = sum(float(reference[i - 1][sequence[i]]) for i in range(len(context), len(sequence)))
            assert math.isclose(float(loglikelihood), expected, abs_tol=1e-4), (doc, choice)
            greedy = all(int(reference[i - 1].argmax()) == sequence[i] for i in range(len(context), len(sequence)))
            assert bool(is_greedy) == greedy
            checked += 1
    assert checked == sum(len(doc["choices"]) for doc in DOCS)
    assert 0.0 <= results["results"]["dualdistill_local_mc"]["acc,none"] <= 1.0
