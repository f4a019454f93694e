"""A real teacher service (subprocess) serving two tiny models, for the pairs tests.

`ServerProcess` runs `dualdistill serve` on free ports and can be stopped and restarted on the same ports,
which the outage tests need; the module-scoped `service` fixture is the shared one. `TcpProxy` sits in
front of a server and can cut every connection and refuse new ones (the service unreachable, as a client
sees a crashed or partitioned server) and then let them through again, in milliseconds instead of the
seconds a server restart takes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, models: dict[str, Path], log_path: Path) -> None:
        self.models = models
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        command = [sys.executable, "-m", "dualdistill.cli.main", "serve", "--host", "127.0.0.1",
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--drain-seconds", "0", "--log-level", "warning"]
        for name, path in self.models.items():
            command += ["--model", f"{name}={path}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "client"), str(REPO / "server")])}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL by default: an outage without a goodbye (a crash, a lost node)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target_port, byte for byte; `cut()` / `restore()` the path."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)  # the accept loop polls, so cut() never waits on a blocked accept
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Close the listener (new connections are refused) and reset every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """teacher (2 layers, seed 0), student (1 layer, seed 1, same tokenizer), odd (another tokenizer)."""
    root = tmp_path_factory.mktemp("pairs-models")
    return {
        "teacher": build_tiny_model(root / "teacher", num_layers=2, seed=0),
        "student": build_tiny_model(root / "student", num_layers=1, seed=1),
        "odd": build_tiny_model(root / "odd", num_layers=1, seed=2, corpus_variant=1),
    }


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    server = ServerProcess(tiny_models, tmp_path_factory.mktemp("server") / "server.log").start()
    yield server
    server.stop(signal.SIGTERM)
