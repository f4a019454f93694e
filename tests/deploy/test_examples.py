"""The examples and the deployment health checks against a real server: `dualdistill serve` in a
subprocess with a tiny random model, API keys on, free ports picked here.

Run alone: .venv/bin/pytest -q tests/deploy/test_examples.py
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import ROOT, free_port, only, render
from tests.fixtures.tiny_model import build_tiny_model

KEY = "example-key-0123456789abcdef"
NODE_DIR = ROOT / "examples" / "node"
START_TIMEOUT_S = 180


class Server:
    def __init__(self, process: subprocess.Popen, http_port: int, grpc_port: int, log: Path):
        self.process, self.http_port, self.grpc_port, self.log = process, http_port, grpc_port, log
        self.url = f"http://127.0.0.1:{http_port}"

    def output(self) -> str:
        return self.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_model(workdir / "tiny")
    key_file = workdir / "api-keys"
    key_file.write_text(f"example:{KEY}\n")
    http_port, grpc_port = free_port(), free_port()
    log = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    command = [
        sys.executable,
        "-m",
        "dualdistill.cli.main",
        "serve",
        "--model",
        f"tiny={model_dir}",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--api-key-file",
        str(key_file),
        "--drain-seconds",
        "5",
        "--log-level",
        "warning",
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = Server(process, http_port, grpc_port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"`dualdistill serve` exited with {process.returncode}:\n{running.output()}")
            try:
                if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {START_TIMEOUT_S} s:\n{running.output()}")
            time.sleep(0.3)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def run(
    argv: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def table_rows(stdout: str) -> list[list[str]]:
    """Rows of an example's logits table: lines that start with a position number."""
    return [line.split() for line in stdout.splitlines() if re.match(r"^\s*\d+\s+\d+\s", line)]


def http_logits(server: Server, token_ids: list[int], start: int, top_k: int) -> dict:
    response = httpx.post(
        f"{server.url}/v1/logits",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "tiny", "sequences": [{"token_ids": token_ids, "start": start}], "top_k": top_k},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_python_client_prints_the_teacher_distribution(server):
    result = run(
        [
            sys.executable,
            "examples/python_client.py",
            "--url",
            server.url,
            "--api-key",
            KEY,
            "--max-new-tokens",
            "4",
            "--top-k",
            "3",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model tiny: vocab" in result.stdout
    rows = table_rows(result.stdout)
    assert 1 <= len(rows) <= 4, result.stdout
    for _position, _token, token_lp, tail, *top in rows:
        probabilities = [float(entry.split(":")[1]) for entry in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True)
        # The printed tail is the mass outside the printed top-k (3-decimal rounding allows some slack).
        assert math.isclose(math.exp(float(tail)), 1 - sum(probabilities), abs_tol=5e-3)
        assert float(token_lp) <= 0


def test_python_client_without_key_reports_unauthenticated(server):
    result = run(
        [sys.executable, "examples/python_client.py", "--url", server.url], env={"DUALDISTILL_API_KEY": ""}
    )
    assert result.returncode != 0
    assert "401" in result.stderr and "UNAUTHENTICATED" in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example(server):
    result = run(
        ["bash", "examples/curl.sh"],
        env={"TEACHER_URL": server.url, "DUALDISTILL_API_KEY": KEY, "TOKEN_IDS": "5,6,7,8", "TOP_K": "2"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["model"] == "tiny"
    assert body["results"][0] == http_logits(server, [5, 6, 7, 8], 1, 2)


def _npm_ci() -> None:
    installed = NODE_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json"
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["@grpc/grpc-js"]
    if installed.exists() and json.loads(installed.read_text())["version"] == wanted:
        return
    result = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed"
)
def test_node_grpc_client_matches_the_http_api(server):
    _npm_ci()
    token_ids = [3, 9, 27, 81, 243, 17]
    result = run(
        [
            "node",
            "client.js",
            "--target",
            f"127.0.0.1:{server.grpc_port}",
            "--api-key",
            KEY,
            "--token-ids",
            ",".join(map(str, token_ids)),
            "--start",
            "2",
            "--top-k",
            "4",
        ],
        cwd=NODE_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s+tiny\s+vocab=\d+", result.stdout, flags=re.M), result.stdout
    rows = table_rows(result.stdout)
    expected = http_logits(server, token_ids, 2, 4)
    assert [int(r[0]) for r in rows] == list(range(2, len(token_ids)))
    for r, (position, token, token_lp, _tail, *top) in enumerate(rows):
        assert int(token) == token_ids[int(position)]
        assert math.isclose(float(token_lp), expected["token_logprobs"][r], abs_tol=1e-3)
        assert [int(entry.split(":")[0]) for entry in top] == expected["top_ids"][r]
        probabilities = [float(entry.split(":")[1]) for entry in top]
        assert all(
            math.isclose(p, math.exp(lp), abs_tol=1e-3)
            for p, lp in zip(probabilities, expected["top_logprobs"][r], strict=True)
        )


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed"
)
def test_node_grpc_client_without_key_reports_unauthenticated(server):
    _npm_ci()
    result = run(
        ["node", "client.js", "--target", f"127.0.0.1:{server.grpc_port}", "--api-key", ""],
        cwd=NODE_DIR,
        env={"DUALDISTILL_API_KEY": ""},
    )
    assert result.returncode == 1 and "UNAUTHENTICATED" in result.stderr


def test_helm_test_hook_script_against_the_server(server, tmp_path):
    pod = only(render({}), "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"example:{KEY}\n")
    ok = run(
        [sys.executable, "-c", script],
        env={"TEACHER_URL": server.url, "EXPECTED_MODELS": "tiny", "API_KEY_FILE": str(key_file)},
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = run(
        [sys.executable, "-c", script],
        env={"TEACHER_URL": server.url, "EXPECTED_MODELS": "smollm2", "API_KEY_FILE": str(key_file)},
    )
    assert wrong.returncode != 0 and "expected ['smollm2']" in wrong.stderr


def test_image_and_compose_health_checks_against_the_server(server):
    from tests.deploy.test_dockerfile import runtime_stage, single

    liveness = single(runtime_stage(), "HEALTHCHECK").value
    result = run([sys.executable, *liveness[2:]], env={"DUALDISTILL_HTTP_PORT": str(server.http_port)})
    assert result.returncode == 0, result.stderr
    from tests.deploy.test_compose import load

    readiness = load()["services"]["teacher"]["healthcheck"]["test"]
    argv = [sys.executable, *readiness[2:]]
    argv[-1] = argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{server.http_port}")
    result = run(argv)
    assert result.returncode == 0, result.stderr


def test_sigterm_exits_zero_within_the_drain(server):
    # Last in this module: it stops the shared server. The deployment files count on this behaviour
    # (preStop sleep + drain inside terminationGracePeriodSeconds, compose's stop_grace_period).
    server.process.send_signal(signal.SIGTERM)
    try:
        returncode = server.process.wait(timeout=5 + 10)  # --drain-seconds 5, plus interpreter exit
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 15 s after SIGTERM with --drain-seconds 5:\n{server.output()}")
    assert returncode == 0, server.output()
