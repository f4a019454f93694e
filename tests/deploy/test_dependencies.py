"""What `pip install dualdistill[...]` brings is enough to import every module of the packages.

A module that imports a package the project does not declare works here (this environment has vLLM and
its dependencies, which bring many packages) and fails on a fresh install: the HTTP server's protocol
imports httptools, which only vLLM's dependencies had installed. Each case below computes what the
install would bring (the requirement closure of pyproject.toml's dependencies and the extras, through the
installed packages' own metadata, markers and extras evaluated), then imports every module file of the
packages in a fresh interpreter where every module that only other installed distributions provide is
absent: None in sys.modules, which is what `import` and `importlib.util.find_spec` report for a module
that is not installed. A namespace shared by both sides (`google`: protobuf in the closure,
googleapis-common-protos outside it) stays, and its subpackages from outside are made absent.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from dualdistill.cli.main import canonical_name
from tests.deploy.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = {"dualdistill": ROOT / "client" / "dualdistill", "dualdistill_server": ROOT / "server" / "dualdistill_server"}
# Optional engines, imported only when asked for (`--engine vllm`): a module whose import fails on one of
# these is fine, a module failing on anything else is not.
OPTIONAL = {"vllm"}


def requirement_closure(extras: tuple[str, ...]) -> set[str]:
    """Canonical names of the distributions `pip install .[extras]` installs (this one's own excluded)."""
    project = PYPROJECT["project"]
    roots = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]
    pending = [Requirement(r) for r in roots]
    pending = [r for r in pending if r.marker is None or r.marker.evaluate({"extra": ""})]
    done: dict[str, set[str]] = {}  # distribution -> the extras whose requirements were followed ("" = its own)
    while pending:
        requirement = pending.pop()
        name = canonical_name(requirement.name)
        wanted = {"", *requirement.extras} - done.get(name, set())
        if not wanted:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it can be imported, so nothing can depend on it
        done.setdefault(name, set()).update(wanted)
        for text in distribution.requires or ():
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in wanted):
                pending.append(child)
    return set(done)


def _second_level(distribution: metadata.Distribution, top: str) -> set[str]:
    """`top.NAME` modules and packages among a distribution's files."""
    names = set()
    for file in distribution.files or ():
        parts = file.parts
        if len(parts) >= 2 and parts[0] == top and not parts[1].endswith((".dist-info", ".pth")):
            name = parts[1][: -len(".py")] if parts[1].endswith(".py") else parts[1]
            if name.isidentifier() and (len(parts) > 2 or parts[1].endswith(".py")):
                names.add(f"{top}.{name}")
    return names


def absent_modules(closure: set[str]) -> list[str]:
    """Modules to make absent: the top-level ones only distributions outside `closure` provide, and in a
    top-level package provided from both sides, the subpackages only the outside ones provide."""
    inside = closure | {"dualdistill"}
    absent = []
    for module, providers in metadata.packages_distributions().items():
        names = {canonical_name(d) for d in providers}
        if not module.isidentifier():
            continue
        if not names & inside:
            absent.append(module)
        elif names - inside:
            ours = set().union(*(_second_level(metadata.distribution(d), module) for d in providers
                                 if canonical_name(d) in inside))  # fmt: skip
            theirs = set().union(*(_second_level(metadata.distribution(d), module) for d in providers
                                   if canonical_name(d) not in inside))  # fmt: skip
            absent += sorted(theirs - ours)
    return sorted(absent)


def module_names(package: str) -> list[str]:
    """Every module file under the package's directory (not pkgutil's walk: it skips a subpackage whose
    __init__ fails to import, and every directory without one)."""
    top, _, _ = package.partition(".")
    root = SOURCES[top]
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = (top, *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name == package or name.startswith(package + "."):
            names.append(name)
    return names


IMPORT_ALL = r"""
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
failures = {}
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing = exc.name or getattr(exc.__cause__, "name", None) or str(exc)
        failures[name] = missing
print(json.dumps(failures))
"""


def import_failures(extras: tuple[str, ...], packages: list[str]) -> dict[str, str]:
    absent = absent_modules(requirement_closure(extras))
    modules = [name for package in packages for name in module_names(package)]
    assert len(modules) > 10, modules  # the listing found the sources
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(absent), json.dumps(modules)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(Path(p).parent) for p in SOURCES.values())},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {module: missing for module, missing in json.loads(done.stdout.splitlines()[-1]).items()
            if missing.split(".")[0] not in OPTIONAL}  # fmt: skip


def test_the_closure_is_computed_from_installed_metadata():
    # the check below is only as good as this: the server extra brings uvicorn's own requirements
    closure = requirement_closure(("server",))
    assert {"uvicorn", "h11", "click", "fastapi", "starlette", "torch", "transformers", "httptools"} <= closure
    assert "vllm" not in closure and "pytest" not in closure
    absent = absent_modules(closure)
    assert "vllm" in absent and "httptools" not in absent and "google" not in absent
    assert "google.protobuf" not in absent


def test_server_install_imports_every_module():
    failures = import_failures(("server",), ["dualdistill", "dualdistill_server"])
    assert not failures, f"modules that need a package `pip install dualdistill[server]` does not bring: {failures}"


@pytest.mark.timeout(900)
def test_client_install_imports_the_client():
    # the training client and its CLI alone (no extras): the wire codec without numba, the transports,
    # the losses; what needs the extras (transformers, the server) is imported where it is used
    failures = import_failures((), ["dualdistill"])
    assert not failures, f"modules that need a package `pip install dualdistill` does not bring: {failures}"
