"""A real `redis-server` (Debian's package) on a free loopback port, for the shared-cache tests.

    with start_redis(tmp_path) as redis:      # pytest.skip when the binary is missing
        redis.url                              # "redis://127.0.0.1:PORT/0"
        redis.kill()                           # SIGKILL: "Redis died" for the degradation tests

No persistence (`--save ''`, `--appendonly no`), its files in a temporary directory.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_MISSING = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisProcess:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def start_redis(workdir: Path) -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_MISSING)
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(workdir), "--protected-mode", "yes"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    running = RedisProcess(process, port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if running.client().ping():
                    break
            except Exception:  # noqa: BLE001 - not accepting connections yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit code {process.poll()})") from None
                time.sleep(0.05)
        yield running
    finally:
        running.kill()
