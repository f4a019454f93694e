"""A command whose dependencies are not installed (`pip install dualdistill` without the extras) says which
module is missing and which extra brings it, exit code 2, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys

from dualdistill.cli.main import declared_extras, missing_dependency
from tests.deploy.support import ROOT

RUN_WITHOUT = r"""
import sys
sys.modules[sys.argv[1]] = None  # what import reports for a module that is not installed
from dualdistill.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _run_without(module: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, module, *argv], capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_serve_without_the_server_extra_names_the_module_and_the_extra():
    done = _run_without("uvicorn", "serve", "--model", "tiny=/nowhere")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "dualdistill serve: the Python module 'uvicorn' is not installed" in done.stderr
    assert "pip install 'dualdistill[server]'" in done.stderr


def test_a_module_no_extra_declares_gets_the_general_hint():
    done = _run_without("grpc_health", "serve", "--model", "tiny=/nowhere")
    assert done.returncode == 2, done.stderr
    assert "'grpc_health' is not installed" in done.stderr and "dualdistill[server]" in done.stderr


def test_the_extras_come_from_the_installed_metadata():
    extras = declared_extras()
    assert extras["fastapi"] == ["server"] and "train" in extras["matplotlib"]
    assert set(extras["transformers"]) >= {"server", "train"}
    assert declared_extras("no-such-distribution") == {}


def test_our_own_missing_modules_keep_their_traceback():
    assert missing_dependency(ModuleNotFoundError("x", name="dualdistill_server.main")) is None
    assert missing_dependency(ModuleNotFoundError("x", name="dualdistill.nothing")) is None
    assert missing_dependency(ModuleNotFoundError("no name")) is None
