"""What `pip install dualdistill[...]` brings is enough to import every module of the packages.

A module that imports a package the project does not declare works here (this environment has vLLM and
its dependencies, which bring many packages) and fails on a fresh install: the HTTP server's protocol
imports httptools, which only vLLM's dependencies had installed. Each case below computes what the
install would bring (the requirement closure of pyproject.toml's dependencies and the extras, through the
installed packages' own metadata, markers evaluated), then imports every module in a fresh interpreter
where each top-level module of every other installed distribution is made absent (None in sys.modules,
which is what `import` and `importlib.util.find_spec` report for a module that is not installed).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.deploy.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Optional engines and tools, imported only when asked for (`--engine vllm`, ...): a module whose import
# fails on one of these is fine, a module failing on anything else is not.
OPTIONAL = {"vllm"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(extras: tuple[str, ...]) -> set[str]:
    """Canonical names of the distributions `pip install .[extras]` installs (this one's own excluded)."""
    project = PYPROJECT["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        pending += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = _canonical(requirement.name)
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # a marker-excluded or uninstalled requirement brings nothing to import
        seen.add(name)
        for text in distribution.requires or ():
            child = Requirement(text)
            wanted = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in wanted):
                pending.append(child)
    return seen


def absent_modules(closure: set[str]) -> list[str]:
    """Top-level modules of installed distributions outside `closure`, unless one inside it provides them too."""
    providers = metadata.packages_distributions()
    return sorted(
        module for module, distributions in providers.items()
        if module.isidentifier() and not ({_canonical(d) for d in distributions} & (closure | {"dualdistill"}))
    )  # fmt: skip


IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
failures = {}
for package in json.loads(sys.argv[2]):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            failures[info.name] = exc.name or str(exc)
print(json.dumps(failures))
"""


def import_failures(extras: tuple[str, ...], packages: list[str]) -> dict[str, str]:
    absent = absent_modules(requirement_closure(extras))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(absent), json.dumps(packages)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {module: missing for module, missing in json.loads(done.stdout.splitlines()[-1]).items()
            if missing.split(".")[0] not in OPTIONAL}  # fmt: skip


def test_the_closure_is_computed_from_installed_metadata():
    # the check below is only as good as this: the server extra brings uvicorn's own requirements
    closure = requirement_closure(("server",))
    assert {
        "uvicorn",
        "h11",
        "click",
        "fastapi",
        "starlette",
        "torch",
        "transformers",
        "httptools",
    } <= closure
    assert "vllm" not in closure and "pytest" not in closure
    assert "vllm" in absent_modules(closure)


@pytest.mark.timeout(900)
def test_server_install_imports_every_module():
    failures = import_failures(("server",), ["dualdistill", "dualdistill_server"])
    assert not failures, (
        f"modules that need a package `pip install dualdistill[server]` does not bring: {failures}"
    )


@pytest.mark.timeout(900)
def test_client_install_imports_the_client():
    # the training client alone (no extras): the wire codec without numba, the transports, the losses
    packages = ["dualdistill.client", "dualdistill.protocol", "dualdistill.losses"]
    failures = import_failures((), packages)
    assert not failures, f"modules that need a package `pip install dualdistill` does not bring: {failures}"
