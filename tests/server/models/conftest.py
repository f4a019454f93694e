"""Fixtures of the model-layer tests: the suite's tiny random model (tests/conftest.py), loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualdistill_server.models import ServedModel, load_model


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> ServedModel:
    """Loaded with the default limits (max_seq_len 512 = the model's context, max_top_k 256)."""
    return load_model("tiny", str(tiny_dir))
