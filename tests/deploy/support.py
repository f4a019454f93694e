"""Shared helpers of the deployment tests: the real CLI parser, ServerConfig from an environment,
Compose-style variable substitution, the rendered Helm chart, and the Dockerfile's instructions."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import re
import socket
from pathlib import Path
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "dualdistill"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*.yaml"))
ENV_PREFIX = "DUALDISTILL_"


def parse_cli(argv: list[str]):
    """Parse `dualdistill ARGV` with the real parser; an unknown command or flag fails with its usage text."""
    from dualdistill.cli.main import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args([str(arg) for arg in argv])
    except SystemExit as exc:
        raise AssertionError(
            f"`dualdistill {' '.join(map(str, argv))}` does not parse:\n{stderr.getvalue()}"
        ) from exc


def server_fields() -> set[str]:
    from dualdistill_server.config import ServerConfig

    return set(ServerConfig.model_fields)


def server_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in server_fields()}


def server_config_from_env(env: dict[str, str]):
    """ServerConfig as the server would build it in a process whose environment holds exactly `env`'s
    DUALDISTILL_* variables (the test process's own ones are hidden)."""
    from dualdistill_server.config import ServerConfig

    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    clean.update({k: str(v) for k, v in env.items()})
    with mock.patch.dict(os.environ, clean, clear=True):
        return ServerConfig()


def serve_config(argv: list[str], env: dict[str, str]):
    """The settings `dualdistill ARGV` (a `serve` command) would run with: env first, then the flags."""
    from dualdistill.cli.serve import overrides_from_args
    from dualdistill_server.config import ServerConfig

    args = parse_cli(argv)
    assert args.command == "serve", argv
    from_env = server_config_from_env(env)
    return ServerConfig(**{**from_env.model_dump(), **overrides_from_args(args)})


# ---- Compose ----------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error} (the `:` forms treat an empty value as unset). A required variable that is missing raises."""

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        value, op, arg = env.get(name), match["op"], match["arg"] or ""
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def compose_env_list(environment: dict | list | None) -> dict[str, str]:
    if not environment:
        return {}
    if isinstance(environment, dict):
        return {k: "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.split("=", 1) for item in environment)


# ---- Helm ---------------------------------------------------------------------------------------------

RELEASE, NAMESPACE = "teacher", "distill"


@functools.lru_cache(maxsize=16)
def _render(values_json: str) -> tuple[dict, ...]:
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
    manifests = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests.append({**document, "_template": path})
    return tuple(manifests)


def render(values: dict | None = None) -> list[dict]:
    """Every manifest the chart renders for `values` (the template path under the key `_template`)."""
    return copy.deepcopy(list(_render(json.dumps(values or {}, sort_keys=True))))


def notes(values: dict | None = None) -> str:
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def only(manifests: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[m['metadata']['name'] for m in found]}"
    )
    return found[0]


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


# ---- Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_commands():
    """Docker's own parser (buildkit, through the `dockerfile` package)."""
    import dockerfile

    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to 0, read, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
