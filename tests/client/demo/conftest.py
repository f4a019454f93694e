"""Tiny teacher and student for the demo tests: the demo package takes model directories as parameters,
so the tests never need SmolLM2 (the demo itself never imports tests/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher: 2 layers, student-init: 1 layer) sharing one tokenizer."""
    from tests.fixtures.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("demo-models")
    return build_tiny_model(folder / "teacher", num_layers=2, seed=0), build_tiny_model(
        folder / "student", num_layers=1, seed=1
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on 2 shared cores it is much faster than two spinning OpenMP workers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
