"""The Dockerfile, read by Docker's own parser: stages, user, environment, entrypoint and health check agree
with the CLI and ServerConfig. No Docker engine is needed; the health check command really runs."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tomllib

from tests.deploy.support import (
    ENV_PREFIX,
    ROOT,
    dockerfile_commands,
    parse_cli,
    serve_config,
    server_config_from_env,
    server_env_names,
)

BIN = Path(sys.executable).parent
SEED_DIR = "/opt/numba-cache"  # where the build stage compiles the wire codec's loops


def stages() -> list[list]:
    """The instructions grouped by stage; global ARGs (before the first FROM) form stage 0."""
    groups: list[list] = [[]]
    for command in dockerfile_commands():
        if command.cmd == "FROM":
            groups.append([])
        groups[-1].append(command)
    return groups


def runtime_stage() -> list:
    return stages()[-1]


def args_of(stage: list) -> dict[str, str]:
    return dict(c.value[0].split("=", 1) for c in stage if c.cmd == "ARG" and "=" in c.value[0])


def env_of(stage: list) -> dict[str, str]:
    env = {}
    for command in stage:
        if command.cmd == "ENV":
            pairs = command.value
            env.update(dict(zip(pairs[0::2], pairs[1::2], strict=True)))
    return env


def single(stage: list, name: str):
    found = [c for c in stage if c.cmd == name]
    assert len(found) == 1, f"expected one {name} in the runtime stage, found {len(found)}"
    return found[0]


def entrypoint_script() -> str:
    copies = [c for c in runtime_stage() if c.cmd == "COPY" and c.heredocs]
    (copy,) = [c for c in copies if c.value[-1] == "/usr/local/bin/dualdistill-entrypoint"]
    return copy.heredocs[0].content


def test_hadolint_is_clean():
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_runtime_copies_only_the_virtualenv():
    groups = stages()
    names = [g[0].value[-1] for g in groups[1:]]
    assert names == ["venv", "torch-cpu", "torch-cuda", "build", "runtime"]
    # The build stage picks its torch stage by the global VARIANT argument, whose default must name one.
    assert groups[4][0].value[0] == "torch-${VARIANT}"
    assert f"torch-{args_of(groups[0])['VARIANT']}" in names
    copies = [c for c in runtime_stage() if c.cmd == "COPY" and not c.heredocs]
    assert [(c.flags, c.value) for c in copies] == [
        (("--from=build",), ("/opt/venv", "/opt/venv")),
        (("--from=build",), (SEED_DIR, SEED_DIR)),  # the compiled wire loops (test below)
    ]


def test_cpu_variant_refuses_to_build_without_the_cpu_index():
    torch_cpu = stages()[2]
    (run,) = [c for c in torch_cpu if c.cmd == "RUN"]
    script = run.value[0]
    assert 'if [ -z "$TORCH_INDEX_URL" ]' in script and "exit 1" in script
    assert '--index-url "$TORCH_INDEX_URL"' in script
    # The same shell text, run with an empty index, stops before pip.
    result = subprocess.run(
        ["sh", "-c", script.replace("pip install", "echo WOULD-INSTALL")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "TORCH_INDEX_URL": "", "TORCH_VERSION": "2.13.0"},
    )
    assert result.returncode == 1 and "WOULD-INSTALL" not in result.stdout
    assert "TORCH_INDEX_URL" in result.stderr


def test_user_is_not_root():
    stage = runtime_stage()
    user = single(stage, "USER").value[0]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: args_of(stage)[m[1]], user)
    uid, _, gid = resolved.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid lets Kubernetes' runAsNonRoot verify it"
    assert gid.isdigit() and int(gid) != 0
    from tests.deploy.support import CHART_DIR, load_values

    chart_security = load_values(CHART_DIR / "values.yaml")["podSecurityContext"]
    assert (chart_security["runAsUser"], chart_security["runAsGroup"]) == (int(uid), int(gid))


def test_environment_is_serverconfig_and_matches_exposed_ports():
    env = env_of(runtime_stage())
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert ours, "the image should pin its ports and host explicitly"
    assert set(ours) <= server_env_names(), set(ours) - server_env_names()
    config = server_config_from_env(ours)
    exposed = {int(p.split("/")[0]) for p in single(runtime_stage(), "EXPOSE").value}
    assert exposed == {config.http_port, config.grpc_port}
    assert config.host == "0.0.0.0", "inside a container the server must listen on all interfaces"


def test_entrypoint_and_cmd_parse_with_the_cli():
    stage = runtime_stage()
    entrypoint, cmd = single(stage, "ENTRYPOINT"), single(stage, "CMD")
    assert entrypoint.json and cmd.json, "exec form, so SIGTERM reaches the server (drain) and not a shell"
    assert entrypoint.value == ("dualdistill-entrypoint",)
    args = parse_cli(list(cmd.value))
    assert args.command == "serve"
    config = serve_config(
        list(cmd.value), {k: v for k, v in env_of(stage).items() if k.startswith(ENV_PREFIX)}
    )
    assert config.http_port == 8000 and config.grpc_port == 50051


def test_entrypoint_script_execs_the_cli(tmp_path):
    script = entrypoint_script()
    assert script.startswith("#!/bin/sh\n")
    assert 'exec dualdistill "$@"' in script, (
        "exec: the server must be PID 1's direct successor to get SIGTERM"
    )
    shellcheck = subprocess.run(
        [str(BIN / "shellcheck"), "-s", "sh", "-"], input=script, capture_output=True, text=True
    )
    assert shellcheck.returncode == 0, shellcheck.stdout
    path = tmp_path / "entrypoint"
    path.write_text(script)
    # The real `dualdistill` of this checkout stands in for the image's.
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(path), "serve", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: dualdistill serve" in result.stdout


def test_entrypoint_prepare_command_parses():
    (line,) = [ln.strip() for ln in entrypoint_script().splitlines() if "models prepare" in ln]
    words = shlex.split(line.replace('"$name"', "smollm2").replace("${PREPARE_DIR:-/models}", "/models"))
    assert words[0] == "dualdistill"
    args = parse_cli(words[1:])
    assert words[1:4] == ["models", "prepare", "smollm2"] and args.command == "models"


class _Health(http.server.BaseHTTPRequestHandler):
    status = {"/healthz": 200}

    def do_GET(self):  # noqa: N802 - http.server's naming
        code = self.status.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("healthy", [True, False])
def test_healthcheck_calls_healthz_on_the_configured_port(healthy):
    check = single(runtime_stage(), "HEALTHCHECK")
    assert check.value[0] == "CMD" and check.json
    assert "/healthz" in check.value[-1] and "DUALDISTILL_HTTP_PORT" in check.value[-1]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    server.RequestHandlerClass.status = {"/healthz": 200 if healthy else 503}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = [sys.executable if check.value[1] == "python" else check.value[1], *check.value[2:]]
        env = {**os.environ, "DUALDISTILL_HTTP_PORT": str(server.server_port)}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    finally:
        server.shutdown()
    assert (result.returncode == 0) == healthy, result.stderr


def test_dockerignore_lets_the_package_sources_through():
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything, then allow: the context stays small and secrets stay out"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["packages"]["find"]["where"])
    assert package_dirs | {"pyproject.toml"} <= allowed


# The loops report numba's cache lookups per argument types: hits only, no misses, means nothing compiled.
_CACHE_LOOKUPS = """
from dualdistill.protocol.wire import kernels
kernels.warm_up()
loops = [getattr(kernels, name) for name in kernels._LOOPS]
print(sum(sum(loop.stats.cache_hits.values()) for loop in loops),
      sum(sum(loop.stats.cache_misses.values()) for loop in loops))
"""


def test_the_image_compiles_the_wire_loops_once_and_the_entrypoint_seeds_them(tmp_path):
    """The build stage's precompile step, run here into a directory of its own, fills a cache that a
    container's empty NUMBA_CACHE_DIR gets from the entrypoint: the codec's warm-up then loads every loop
    and compiles none. An entrypoint that cannot create NUMBA_CACHE_DIR still starts the command."""
    build = stages()[4]
    (step,) = [c.value[0] for c in build if c.cmd == "RUN" and "warm_up" in c.value[0]]
    seed = tmp_path / "seed"
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("client", "server"))}  # fmt: skip
    subprocess.run(["sh", "-c", step.replace(SEED_DIR, str(seed))], env=env, check=True, timeout=600)
    assert any(seed.rglob("*.nbi")), "the precompile step left no numba cache index"

    script = entrypoint_script().replace(SEED_DIR, str(seed)).replace('exec dualdistill "$@"', 'exec "$@"')
    entrypoint = tmp_path / "entrypoint"
    entrypoint.write_text(script)
    cache = tmp_path / "container" / "numba"
    run = [sys.executable, "-c", _CACHE_LOOKUPS]
    lookups = subprocess.run(["sh", str(entrypoint), *run], env={**env, "NUMBA_CACHE_DIR": str(cache)},
                             capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    hits, misses = map(int, lookups.stdout.split())
    assert hits > 0 and misses == 0, lookups.stdout
    assert sorted(p.name for p in cache.rglob("*.nbi")) == sorted(p.name for p in seed.rglob("*.nbi"))

    unusable = {**env, "NUMBA_CACHE_DIR": "/proc/no-such-dir/numba"}  # mkdir fails there, even for root
    started = subprocess.run(["sh", str(entrypoint), "echo", "started"], env=unusable, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert started.returncode == 0 and started.stdout == "started\n", started.stderr
