"""The vllm engine on the real SmolLM2-135M-Instruct agrees with the hf engine (slow suite).

Real English text, top_k 20 and 128: the same top-k ids (an order swap only between near-tied entries,
closer than the engines' ~4e-5 float32 disagreement), top-k and token logprobs within 1e-3. vLLM's
log-normaliser differs from transformers' by ~2e-5, and the tail's mass beyond the fetched ranks is
1 - sum(fetched), so the tail agrees to ~5e-5 in probability mass, and in log-probability within 1e-3
where its mass is at least 0.05 (engines/vllm/logits.py).
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
        np.testing.assert_allclose(top, ref_top, atol=1e-3, rtol=0)  # sorted rows: position by position
        assert_ids_agree_up_to_near_ties(top_ids, ref_ids, ref_top)
        np.testing.assert_allclose(ours.token_logprobs, reference.token_logprobs, atol=1e-3, rtol=0)
        resolved = reference.tail_logprobs >= np.log(0.05)
        np.testing.assert_allclose(ours.tail_logprobs[resolved], reference.tail_logprobs[resolved], atol=1e-3)
        np.testing.assert_allclose(np.exp(ours.tail_logprobs), np.exp(reference.tail_logprobs), atol=5e-5, rtol=0)


def assert_ids_agree_up_to_near_ties(ids: np.ndarray, ref_ids: np.ndarray, ref_top: np.ndarray, gap: float = 2e-4):
    """Equal ids, except at positions whose reference logprob is within `gap` of a neighbour's (or, at the
    row's last position, of whatever the reference left out: a boundary tie)."""
    assert np.mean(ids == ref_ids) > 0.999
    for r, j in zip(*np.nonzero(ids != ref_ids), strict=True):
        row = ref_top[r]
        near = [abs(row[j] - row[i]) for i in (j - 1, j + 1) if 0 <= i < len(row)]
        assert j == len(row) - 1 or min(near) < gap, f"row {r} position {j}: {ids[r, j]} vs {ref_ids[r, j]}"


def test_smollm2_greedy_generation_agrees(engines) -> None:
    hf, vllm = engines
    prompt = hf.encode_chat([{"role": "user", "content": "What is 7 times 6?"}])
    args = {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0}
    (ours,), (reference,) = vllm.generate([prompt], **args), hf.generate([prompt], **args)
    assert ours.token_ids == reference.token_ids and ours.finish_reason == reference.finish_reason
