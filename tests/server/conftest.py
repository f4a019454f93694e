"""Server-test fixtures: the tiny model loaded in this process, with the limits `tiny_server` uses."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The same model `tiny_server` serves, as a ServedModel in this process (the reference)."""
    from dualdistill_server.models import load_model

    return load_model("tiny", str(tiny_model_dir), device="cpu", dtype="float32", max_seq_len=256, max_top_k=512)
