"""`/get_sequence_logprobs/` against the client of TRL 1.10, the last release whose server-teacher trainers
called `trl vllm-serve` (later releases call vLLM's /v1/completions: test_trl_clients.py).

Two TRL versions cannot share one environment, so `make venv` installs TRL 1.10 without dependencies into
.venv/trl-1.10 and this test runs its `VLLMClient.get_sequence_logprobs` (binary and JSON), TRL's own
`_decode_binary_logprobs` and `check_server` in a subprocess whose path starts there. Its constructor is
bypassed as in test_trl_clients.py (it needs vLLM's NCCL communicator); the module is imported with
TRL's `is_vllm_available` answering False, so it does not import vLLM modules it would not use.
Skipped when that directory is missing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.compat.conftest import reference_logprobs
from tests.compat.test_trl_clients import PROMPT_LENGTHS, SEQUENCES, expected_rows

TRL_1_10 = Path(os.environ.get("DUALDISTILL_TRL_1_10", Path(sys.prefix) / "trl-1.10"))

CLIENT_SCRIPT = r"""
import json, math, sys
sys.path.insert(0, sys.argv[1])
import importlib
import_utils = importlib.import_module("trl.import_utils")
import_utils.is_vllm_available = lambda: False
from trl.generation import vllm_client
import requests

client = vllm_client.VLLMClient.__new__(vllm_client.VLLMClient)
client.session, client.base_url = requests.Session(), sys.argv[2]
client.check_server(total_timeout=30)
args = json.loads(sys.argv[3])
binary = client.get_sequence_logprobs(args["sequences"], args["prompt_lengths"], top_logprobs=3, use_binary=True)
plain = client.get_sequence_logprobs(args["sequences"], args["prompt_lengths"], top_logprobs=3, use_binary=False)
chunked = client.get_sequence_logprobs(args["sequences"], args["prompt_lengths"], top_logprobs=3, chunk_size=1)
print(json.dumps({"binary": binary, "json": plain, "same_chunked": chunked == binary}, default=str))
"""


@pytest.fixture(scope="module")
def trl_1_10_answers(tiny_server) -> dict:
    if not (TRL_1_10 / "trl" / "generation" / "vllm_client.py").exists():
        pytest.skip(f"TRL 1.10 is not installed at {TRL_1_10} (`make venv` puts it there)")
    args = json.dumps({"sequences": SEQUENCES, "prompt_lengths": PROMPT_LENGTHS})
    done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, str(TRL_1_10), tiny_server.http_url, args],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _floats(values) -> np.ndarray:
    return np.array(values, dtype=np.float64) if values else np.zeros(0)


def test_binary_answer_decodes_in_trl_to_the_teacher_rows(trl_1_10_answers, tiny_model) -> None:
    out = trl_1_10_answers["binary"]
    k = 3
    for b, (sequence, prompt_length) in enumerate(zip(SEQUENCES, PROMPT_LENGTHS, strict=True)):
        ids, lps, actual = expected_rows(tiny_model, sequence, prompt_length, k)
        assert len(out["logprobs"][b]) == len(sequence) - prompt_length
        np.testing.assert_array_equal(np.array(out["logprob_token_ids"][b]).reshape(-1, k), ids.reshape(-1, k))
        got = np.array([[-math.inf if v == "-inf" else v for v in row] for row in out["logprobs"][b]], dtype=float)
        np.testing.assert_allclose(got.reshape(-1, k), lps.reshape(-1, k), atol=2e-5)
        got_actual = [-math.inf if v == ["-inf"] or v == [float("-inf")] else v[0] for v in out["actual_logprobs"][b]]
        np.testing.assert_allclose(_floats(got_actual), actual, atol=2e-5)
        realised = [0 if p == 0 else sequence[p] for p in range(prompt_length, len(sequence))]
        assert [v[0] for v in out["actual_token_ids"][b]] == realised
    assert trl_1_10_answers["same_chunked"]


def test_json_answer_is_ranked_top_k_then_the_realised_token(trl_1_10_answers, tiny_model) -> None:
    out = trl_1_10_answers["json"]
    sequence, prompt_length = SEQUENCES[0], PROMPT_LENGTHS[0]
    reference = reference_logprobs(tiny_model, sequence)
    for t, position in enumerate(range(prompt_length, len(sequence))):
        top = np.argsort(-reference[position - 1], kind="stable")[:3].tolist()
        assert out["logprob_token_ids"][0][t] == top + ([] if sequence[position] in top else [sequence[position]])
    assert out["logprobs"][1][0] == [] and out["logprob_token_ids"][1][0] == []  # P = 0: no first-token row
