"""Fixtures shared by the whole suite (keep this file small and generic).

- `tiny_model_dir`: a tiny random Llama + real BPE tokenizer on disk (tests/fixtures/tiny_model.py).
- `tiny_server`: ONE `dualdistill serve` subprocess for the session, serving that model as "tiny" on
  loopback with free ports; yields a `tests.fixtures.server_process.RunningServer` (`.http_url`,
  `.grpc_target`, `.log_tail()`). Its settings (SERVER_TEST_ARGS) are what tests may rely on: a 30 ms
  batching window (concurrent requests coalesce), 256-token sequences, top_k up to the whole vocab,
  200 kB bodies and gRPC messages, 20000 queued tokens.
  Tests that stop or signal a server start their own with `start_server`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server_process import RunningServer, start_server

TINY_MODEL_NAME = "tiny"
SERVER_TEST_ARGS = (
    "--max-wait-ms", "30",
    "--max-seq-len", "256",
    "--max-top-k", "512",  # above the tiny vocab (320): a row may cover it
    "--max-samples", "512",
    "--max-body-bytes", "200000",
    "--max-message-bytes", "200000",
    "--max-queue-tokens", "20000",
    "--log-level", "info",
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *SERVER_TEST_ARGS, wire_kernels="auto") as server:
        yield server
