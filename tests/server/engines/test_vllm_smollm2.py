"""The vllm engine on the real SmolLM2-135M-Instruct agrees with the hf engine (slow suite).

Real English text, top_k 20 and 128: identical top-k ids, top-k and token logprobs within 1e-3. The tail
is compared in log-probability where its mass is at least 1e-4, and in probability below that: vLLM
returns float32 logprobs of the top k + 128 ranks only, so a tail that is tiny and spread over the
49152-token vocabulary is resolved to ~1e-6 in mass (engines/vllm/logits.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.server.engines.conftest import requires_vllm
from tests.server.models.helpers import make_task

pytestmark = [requires_vllm, pytest.mark.integration, pytest.mark.slow]
TEXT = (
    "The teacher service returns, for every position of a sequence, the top-k next-token distribution of a "
    "large model, so that many small students can learn from it at once. What is 7 times 6? The answer is 42."
)


@pytest.fixture(scope="module")
def engines():
    from dualdistill_server.engines.vllm import load_vllm_model
    from dualdistill_server.models import load_model, prepare_smollm2

    directory = str(prepare_smollm2())
    vllm_model = load_vllm_model("smollm2", directory, max_seq_len=512, max_top_k=128)
    yield load_model("smollm2", directory, max_seq_len=512, max_top_k=128), vllm_model
    vllm_model.close()


@pytest.mark.parametrize("top_k", [20, 128])
def test_smollm2_rows_agree(engines, top_k: int) -> None:
    hf, vllm = engines
    ids = hf.encode_text(TEXT)
    tasks = [make_task(ids, 1, top_k=top_k), make_task(ids[:40], 30, top_k=top_k)]
    for ours, reference in zip(vllm.compute_logits(tasks), hf.compute_logits(tasks), strict=True):
        top_ids, top, _ = ours.dense()
        ref_ids, ref_top, _ = reference.dense()
        np.testing.assert_array_equal(top_ids, ref_ids)
        np.testing.assert_allclose(top, ref_top, atol=1e-3, rtol=0)
        np.testing.assert_allclose(ours.token_logprobs, reference.token_logprobs, atol=1e-3, rtol=0)
        resolved = reference.tail_logprobs >= np.log(1e-4)
        np.testing.assert_allclose(ours.tail_logprobs[resolved], reference.tail_logprobs[resolved], atol=1e-3)
        np.testing.assert_allclose(np.exp(ours.tail_logprobs), np.exp(reference.tail_logprobs), atol=2e-6, rtol=0)


def test_smollm2_greedy_generation_agrees(engines) -> None:
    hf, vllm = engines
    prompt = hf.encode_chat([{"role": "user", "content": "What is 7 times 6?"}])
    args = {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0}
    (ours,), (reference,) = vllm.generate([prompt], **args), hf.generate([prompt], **args)
    assert ours.token_ids == reference.token_ids and ours.finish_reason == reference.finish_reason
