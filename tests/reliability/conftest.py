"""Fixtures of the reliability suite.

- `keyed_server`: ONE `dualdistill serve` subprocess for this folder with API keys configured
  (`--api-key-file`, two tenants) and debug logging, so the security tests can grep everything it
  writes for key material. Started only when a test asks for it.
- Tests that do not kill or reconfigure a server use the shared `tiny_server` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import SERVER_TEST_ARGS, TINY_MODEL_NAME
from tests.fixtures.server_process import RunningServer, start_server
from tests.reliability.support import ApiKeys


@dataclass
class KeyedServer:
    server: RunningServer
    keys: ApiKeys


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    keys = ApiKeys.write(tmp_path_factory.mktemp("keys") / "api-keys.txt")
    args = [*SERVER_TEST_ARGS, "--api-key-file", str(keys.path)]
    args[args.index("--log-level") + 1] = "debug"  # the most the server ever writes: keys must not be in it
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *args) as server:
        yield KeyedServer(server, keys)
