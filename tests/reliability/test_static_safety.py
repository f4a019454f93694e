"""No unsafe deserialization or code execution in the shipped sources (server/ and client/).

Everything that crosses the network or comes out of a cache (request bodies, protobuf messages, wire
payloads, cached results, checkpoints) must be parsed by a data-only parser. An `ast` scan refuses:
- importing pickle and its relatives (pickle, _pickle, cPickle, dill, cloudpickle, joblib, marshal, shelve);
- `torch.load` without `weights_only=True` (a pickle underneath);
- `numpy.load(..., allow_pickle=True)`;
- `yaml.load` / `load_all` without a SafeLoader, and `yaml.unsafe_load*` / `full_load*`;
- the builtins `eval` and `exec`; `os.system`; `shell=True`; `trust_remote_code` other than False.
The scanner itself is tested on snippets, so an empty finding list means something.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("server", "client")
PICKLE_LIKE = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
YAML_UNSAFE = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """'torch.serialization.load' for the expression torch.serialization.load ('' if not a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_problem(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    head, _, last = name.rpartition(".")
    if name in ("eval", "exec"):
        return f"builtin {name}()"
    if name == "os.system":
        return "os.system()"
    if head.split(".")[0] == "torch" and last == "load" and not _is_constant(_keyword(call, "weights_only"), True):
        return "torch.load without weights_only=True"
    if head in ("np", "numpy") and last == "load" and not _is_constant(_keyword(call, "allow_pickle"), False) \
            and _keyword(call, "allow_pickle") is not None:  # fmt: skip
        return "numpy.load with allow_pickle"
    if head == "yaml" and last in YAML_UNSAFE:
        return f"yaml.{last}"
    if head == "yaml" and last in ("load", "load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or not _dotted(loader).endswith("SafeLoader"):
            return f"yaml.{last} without SafeLoader"
    if _is_constant(_keyword(call, "shell"), True):
        return "shell=True"
    remote = _keyword(call, "trust_remote_code")
    if remote is not None and not _is_constant(remote, False):
        return "trust_remote_code not False"
    return None


def scan(source: str) -> list[tuple[int, str]]:
    """(line, problem) for every unsafe construct in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in PICKLE_LIKE]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_LIKE:
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            found += [(node.lineno, "from torch import load") for a in node.names if a.name == "load"]
        elif isinstance(node, ast.Call) and (problem := _call_problem(node)) is not None:
            found.append((node.lineno, problem))
    return found


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")) and ".egg-info" not in str(p)]


def test_sources_have_no_unsafe_deserialization_or_code_execution() -> None:
    files = _sources()
    assert len(files) > 50, "the scan must see the whole code base"
    findings = [f"{p.relative_to(ROOT)}:{line}: {problem}" for p in files for line, problem in scan(p.read_text())]
    assert not findings, "\n".join(findings)


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("import pickle", "import pickle"),
        ("import cloudpickle as cp", "import cloudpickle"),
        ("from pickle import loads", "from pickle import ..."),
        ("from torch import load", "from torch import load"),
        ("torch.load(f)", "torch.load without weights_only=True"),
        ("torch.load(f, weights_only=False)", "torch.load without weights_only=True"),
        ("torch.serialization.load(f)", "torch.load without weights_only=True"),
        ("np.load(f, allow_pickle=True)", "numpy.load with allow_pickle"),
        ("yaml.load(text)", "yaml.load without SafeLoader"),
        ("yaml.load(text, Loader=yaml.Loader)", "yaml.load without SafeLoader"),
        ("yaml.unsafe_load(text)", "yaml.unsafe_load"),
        ("yaml.full_load(text)", "yaml.full_load"),
        ("eval(expr)", "builtin eval()"),
        ("exec(code)", "builtin exec()"),
        ("os.system(cmd)", "os.system()"),
        ("subprocess.run(cmd, shell=True)", "shell=True"),
        ("AutoModel.from_pretrained(p, trust_remote_code=True)", "trust_remote_code not False"),
        ("AutoModel.from_pretrained(p, trust_remote_code=flag)", "trust_remote_code not False"),
    ],
)
def test_the_scanner_flags_each_unsafe_pattern(snippet: str, problem: str) -> None:
    assert scan(snippet) == [(1, problem)]


@pytest.mark.parametrize(
    "snippet",
    ["torch.load(f, map_location='cpu', weights_only=True)", "yaml.load(t, Loader=yaml.SafeLoader)",
     "yaml.safe_load(t)", "np.load(f)", "model.eval()", "json.loads(b)", "re.compile(p)",
     "AutoModel.from_pretrained(p, trust_remote_code=False)", "subprocess.run(['ls'])"],
)  # fmt: skip
def test_the_scanner_passes_safe_code(snippet: str) -> None:
    assert scan(snippet) == []
