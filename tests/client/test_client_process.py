"""Teachers for the client tests.

`TinyTeacher` addresses the session's shared tiny server (tests/conftest.py `tiny_server`).
`TeacherProcess` is a `dualdistill serve` subprocess on fixed free ports that can be killed and started
again on the same ports (the restart test; the shared fixture picks new ports on every start). Its output
goes to a log file, whose tail is shown when the server fails to become ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT = 180.0  # seconds; a cold start imports torch + transformers on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TeacherProcess:
    """`dualdistill serve --model NAME=DIR ...` on 127.0.0.1 with free HTTP and gRPC ports."""

    def __init__(self, model_dirs: dict[str, str | Path], extra_args: tuple[str, ...] = ()) -> None:
        self.model_dirs = {name: str(path) for name, path in model_dirs.items()}
        self.extra_args = extra_args
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="dualdistill-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def url(self, transport: str) -> str:
        return f"http://127.0.0.1:{self.http_port}" if transport == "http" else f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        models = [arg for name, path in self.model_dirs.items() for arg in ("--model", f"{name}={path}")]
        return [
            sys.executable,
            "-m",
            "dualdistill.cli.main",
            "serve",
            *models,
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--log-level",
            "warning",
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> TeacherProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")} | {
            "PYTHONUNBUFFERED": "1"
        }
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"teacher exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                ready = httpx.get(f"{self.url('http')}/readyz", timeout=1.0).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and self._grpc_listening():
                return
            time.sleep(0.1)
        raise RuntimeError(f"teacher not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def _grpc_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1.0):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the abrupt end of a crashed or preempted teacher (no draining)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> TeacherProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class TinyTeacher:
    """The session's tiny teacher (tests/conftest.py `tiny_server`) as the client tests address it."""

    http_url: str
    grpc_target: str
    model_dir: str

    def url(self, transport: str) -> str:
        return self.http_url if transport == "http" else self.grpc_target
