"""Schemathesis, as a new user would run it, against a real server: `/openapi.json` must describe the server.

The `schemathesis run` command line (a separate process) reads the served document and runs ALL its
checks (server errors, status codes, content types, headers, response schemas, negative data rejected,
positive data accepted, missing required header, unsupported methods, ignored auth, ...) on every
operation, our own API and the vLLM/TRL-compatible endpoints alike, once against a server without keys
and once against a server with keys (the fuzzer sends a valid key; `ignored_auth` tries without one).
`positive_data_acceptance` is replaced by `documented_constraints` (tests/reliability/schema_constraints.py):
the same check, less the refusals docs/api.md lists as rules JSON Schema cannot state.

Fast: the fuzzing phase, a few cases per operation, fixed seed. Slow: every phase (examples, coverage,
fuzzing), more cases, a new seed each run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SERVER_TEST_ARGS, TINY_MODEL_NAME
from tests.fixtures.server_process import start_server
from tests.reliability.support import ApiKeys

ROOT = Path(__file__).resolve().parents[2]
MAX_GENERATE_TOKENS = 512  # generation cases stay short: the fuzz judges answers, not generation speed
LIMITS = {"max_body_bytes": 200_000, "max_queue_tokens": 20_000, "max_generate_tokens": MAX_GENERATE_TOKENS,
          "max_seq_len": 256}  # SERVER_TEST_ARGS and the flag below


@pytest.fixture(scope="module", params=["no-keys", "keys"])
def fuzzed_server(request, tiny_model_dir, tmp_path_factory):
    """(server, key or None): the shared test settings, short generations, with or without API keys."""
    args = [*SERVER_TEST_ARGS, "--max-generate-tokens", str(MAX_GENERATE_TOKENS)]
    args[args.index("--log-level") + 1] = "warning"
    key = None
    if request.param == "keys":
        keys = ApiKeys.write(tmp_path_factory.mktemp("fuzz-keys") / "api-keys.txt")
        args += ["--api-key-file", str(keys.path)]
        key = keys.first
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *args) as server:
        yield server, key


def run_schemathesis(url: str, key: str | None, report: Path, *, phases: str, examples: int, seed: int,
                     timeout: float) -> tuple[int, dict, str]:
    """(exit code, the JSON report, the console output) of one `schemathesis run`."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--phases", phases, "--max-examples", str(examples), "--seed", str(seed), "--workers", "1",
        "--request-timeout", "60", "--max-response-time", "60",  # a hang, not a slow forward, trips these
        "--output-sanitize", "false", "--report", "json", "--report-json-path", str(report),
    ]
    if key is not None:
        command += ["--header", f"Authorization: Bearer {key}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.schema_constraints",
           "SCHEMA_FUZZ_LIMITS": json.dumps(LIMITS), "PYTHONPATH": os.pathsep.join(
               [str(ROOT), str(ROOT / "client"), str(ROOT / "server"), os.environ.get("PYTHONPATH", "")])}
    # In the report's folder: schemathesis keeps a cache (.schemathesis/) in its working directory.
    done = subprocess.run(command, cwd=report.parent, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, json.loads(report.read_text()), done.stdout[-20_000:] + done.stderr[-5_000:]


def _assert_conforms(code: int, report: dict, output: str, keyed: bool) -> None:
    assert code == 0 and not report["failures"] and not report["errors"], output
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] >= 10, operations  # every route, compat ones too
    assert report["test_cases"]["generated"] >= 100, report["test_cases"]
    if keyed:
        assert report["auth"], report.get("auth")  # the bearer scheme was seen and used
    print(json.dumps({"keys": keyed, "test_cases": report["test_cases"], "running_time": report["running_time"]}))


def test_schemathesis_finds_nothing(fuzzed_server, tmp_path) -> None:
    server, key = fuzzed_server
    code, report, output = run_schemathesis(server.http_url, key, tmp_path / "report.json", phases="fuzzing",
                                            examples=30, seed=1, timeout=280)
    _assert_conforms(code, report, output, keyed=key is not None)


@pytest.mark.slow
def test_schemathesis_every_phase_finds_nothing(fuzzed_server, tmp_path) -> None:
    server, key = fuzzed_server
    code, report, output = run_schemathesis(server.http_url, key, tmp_path / "report.json",
                                            phases="examples,coverage,fuzzing", examples=100,
                                            seed=random.randrange(2**31), timeout=1500)
    _assert_conforms(code, report, output, keyed=key is not None)
