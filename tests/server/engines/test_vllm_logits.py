"""The vllm engine's logits agree with the hf engine's on the same float32 weights (docs/api.md Semantics).

Same top-k ids, and top-k, token and tail logprobs within 1e-3; what vLLM cannot compute exactly
(temperature != 1, mode "sample") is refused with InvalidArgument naming the field.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dualdistill_server.errors import InvalidArgument
from tests.server.engines.conftest import requires_vllm
from tests.server.models.helpers import make_task, random_ids

pytestmark = requires_vllm
ATOL = 1e-3  # the bar; measured here: ~6e-5 (vLLM's CPU kernels vs transformers, float32)


def assert_agree(ours, reference) -> None:
    ids, logprobs, _ = ours.dense()
    ref_ids, ref_logprobs, _ = reference.dense()
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours.token_logprobs, reference.token_logprobs, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours.tail_logprobs, reference.tail_logprobs, atol=ATOL, rtol=0)


def _tasks(vocab: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    shapes = [(2, 1, 1), (5, 1, 3), (17, 10, 7), (40, 39, 20), (64, 3, 50), (120, 60, 64), (200, 1, 20)]
    return [make_task(random_ids(rng, n, vocab), start, top_k=k) for n, start, k in shapes]


def test_topk_rows_agree_with_the_hf_engine(vllm_tiny, hf_tiny) -> None:
    tasks = _tasks(vllm_tiny.info.vocab_size)
    for ours, reference, task in zip(vllm_tiny.compute_logits(tasks), hf_tiny.compute_logits(tasks), tasks, strict=True):
        assert ours.num_rows == task.num_rows and ours.counts is None
        assert_agree(ours, reference)


def test_real_text_agrees(vllm_tiny, hf_tiny) -> None:
    ids = hf_tiny.encode_text("The quick brown fox jumps over the lazy dog. What is 12 plus 30?")
    assert vllm_tiny.encode_text("The quick brown fox jumps over the lazy dog. What is 12 plus 30?") == ids
    task = make_task(ids, 4, top_k=10)
    (ours,), (reference,) = vllm_tiny.compute_logits([task]), hf_tiny.compute_logits([task])
    assert_agree(ours, reference)


def test_concurrent_callers_get_their_own_rows(vllm_tiny, hf_tiny) -> None:
    """The service calls from several threads; every call's rows are its own tasks' rows."""
    tasks = _tasks(vllm_tiny.info.vocab_size, seed=11)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda task: vllm_tiny.compute_logits([task])[0], tasks))
    for ours, reference in zip(results, hf_tiny.compute_logits(tasks), strict=True):
        assert_agree(ours, reference)


def test_same_handshake_and_limits_as_the_hf_engine(vllm_tiny, hf_tiny) -> None:
    ours, reference = vllm_tiny.info, hf_tiny.info
    assert (ours.engine, reference.engine) == ("vllm", "hf")
    for field in ("vocab_size", "tokenizer_sha256", "max_seq_len", "max_top_k", "eos_token_id", "bos_token_id", "dtype"):
        assert getattr(ours, field) == getattr(reference, field), field
    assert ours.fingerprint != reference.fingerprint  # the result cache keeps the engines apart


@pytest.mark.parametrize(
    ("change", "field", "phrase"),
    [({"temperature": 2.0}, "temperature", "temperature 1 only"), ({"temperature": 0.5}, "temperature", "--engine hf"),
     ({"mode": "sample"}, "mode", "top-k only")],
)
def test_what_vllm_cannot_compute_exactly_is_refused(vllm_tiny, change, field, phrase) -> None:
    task = make_task([1, 5, 6, 7], 1, **change)
    with pytest.raises(InvalidArgument, match=phrase) as caught:
        vllm_tiny.check_tasks([task])
    assert caught.value.field == field and "vllm engine" in caught.value.message
    with pytest.raises(InvalidArgument):
        vllm_tiny.compute_logits([task])


def test_after_the_warm_up_no_logits_call_compiles(vllm_tiny) -> None:
    """vLLM compiles its prompt-logprob rank kernel (torch.compile) on first use; the server warms the
    engine up before it is ready (main.py), so no request waits for a compiler: after `warm_up`, calls of
    new lengths add no graph."""
    from torch._dynamo.utils import counters

    vllm_tiny.warm_up()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1, "the warm-up compiled nothing: does vLLM still compile on this path?"
    rng = np.random.default_rng(7)
    for length in (6, 17, 40):
        vllm_tiny.compute_logits([make_task(random_ids(rng, length, vllm_tiny.info.vocab_size), start=1)])
    assert counters["stats"]["unique_graphs"] == graphs
