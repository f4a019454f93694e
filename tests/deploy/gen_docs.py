"""Generated parts of the deployment docs, each from its single source.

- docs/deploy.md's environment table      <- ServerConfig's fields (description, default, bounds) + SERVE_FLAGS
- helm/dualdistill/README.md values table <- the `# --` comments and defaults in values.yaml
- values.schema.json's `server.settings`  <- ServerConfig's JSON schema, less the fields the chart sets itself

    python -m tests.deploy.gen_docs --write    # rewrite the three places
    python -m tests.deploy.gen_docs --check    # exit 1 when one is stale (the tests do the same)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
CHART = ROOT / "helm" / "dualdistill"
CHART_README = CHART / "README.md"
VALUES = CHART / "values.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"

# ServerConfig fields the chart renders from its own values (ports, drain, models, keys), so they are not
# accepted under `server.settings`; deployment.yaml/configmap.yaml refuse them too.
CHART_OWNED_FIELDS = ("models", "host", "http_port", "grpc_port", "drain_seconds", "api_keys", "api_key_file")

ENV_BEGIN, ENV_END = (
    "<!-- BEGIN env-table (generated: python -m tests.deploy.gen_docs --write) -->",
    "<!-- END env-table -->",
)
VALUES_BEGIN, VALUES_END = (
    "<!-- BEGIN values-table (generated: python -m tests.deploy.gen_docs --write) -->",
    "<!-- END values-table -->",
)


def _server_config():
    from dualdistill_server.config import ServerConfig

    return ServerConfig


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def env_table() -> str:
    """Markdown table: one row per ServerConfig field, its variable, flag, default, bounds and description."""
    from dualdistill.cli.serve import SERVE_FLAGS

    config = _server_config()
    flags = {dest: flag for flag, dest, _, _ in SERVE_FLAGS}
    flags["models"] = "--model NAME=PATH (repeatable)"
    flags["engine_args"] = "--engine-arg KEY=VALUE (repeatable)"
    properties = config.model_json_schema()["properties"]
    rows = ["| Variable | `serve` flag | Default | Bounds | Description |", "|---|---|---|---|---|"]
    for name, field in config.model_fields.items():
        default = field.get_default(call_default_factory=True)
        schema = properties[name]
        bounds = []
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")):
            if key in schema:
                bounds.append(f"{symbol} {schema[key]}")
        rows.append(
            f"| `DUALDISTILL_{name.upper()}` | {f'`{flags[name]}`' if name in flags else '(env only)'} | `{json.dumps(default)}` | "
            f"{', '.join(bounds)} | {_cell(field.description or '')} |"
        )
    return "\n".join(rows)


def settings_schema() -> dict:
    """JSON schema of the chart's `server.settings`: every ServerConfig field the chart does not own."""
    config = _server_config()
    properties = {}
    for name, schema in config.model_json_schema()["properties"].items():
        if name in CHART_OWNED_FIELDS:
            continue
        properties[name] = {key: value for key, value in schema.items() if key not in ("title", "default")}
    return {
        "type": "object",
        "description": "ServerConfig fields by name (docs/deploy.md), rendered as DUALDISTILL_<NAME>.",
        "additionalProperties": False,
        "properties": properties,
    }


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


def documented_values(values_text: str) -> list[tuple[str, str]]:
    """[(dotted.path, description)] for every key preceded by a `# -- description` comment, in file order."""
    stack: list[tuple[int, str]] = []
    pending: str | None = None
    rows = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        match = _KEY.match(line)
        if not match:
            if not stripped.startswith("#"):
                pending = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            rows.append((".".join(key for _, key in stack), pending))
            pending = None
    return rows


def lookup(values: dict, path: str):
    node = values
    for key in path.split("."):
        node = node[key]
    return node


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    for path, description in documented_values(values_text):
        default = json.dumps(lookup(values, path), separators=(", ", ": "))
        rows.append(f"| `{path}` | `{_cell(default)}` | {_cell(description)} |")
    return "\n".join(rows)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def expected_files() -> dict[Path, str]:
    """The three generated files as they should read now."""
    schema = json.loads(VALUES_SCHEMA.read_text())
    schema["properties"]["server"]["properties"]["settings"] = settings_schema()
    return {
        DEPLOY_DOC: replace_between(DEPLOY_DOC.read_text(), ENV_BEGIN, ENV_END, env_table()),
        CHART_README: replace_between(
            CHART_README.read_text(), VALUES_BEGIN, VALUES_END, values_table(VALUES.read_text())
        ),
        VALUES_SCHEMA: json.dumps(schema, indent=2) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated parts")
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated part is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        if path.read_text() != text:
            stale.append(path)
            if args.write:
                path.write_text(text)
    for path in stale:
        print(f"{'rewrote' if args.write else 'stale'}: {path.relative_to(ROOT)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
