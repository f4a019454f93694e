"""docs/reliability.md names, for every promise, the tests that prove it: each named file and test must
exist, so the table cannot silently point at a renamed or deleted test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def _references(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for `tests/...py::name` and bare `tests/...py` references; a `::name`
    right after a reference (same cell, file omitted) belongs to that reference's file."""
    out, current = [], None
    for match in re.finditer(r"`(tests/[\w/]+\.py)?(?:::(\w+))?(?:\[[^\]]*\])?`", text):
        path, name = match.groups()
        if path is None and name is None:
            continue
        current = path or current
        out.append((current, name))
    return out


def test_every_test_named_in_the_reliability_doc_exists() -> None:
    text = DOC.read_text()
    references = _references(text)
    assert len(references) > 40, "the table must name the tests"
    missing = []
    for path, name in references:
        file = ROOT / path
        if not file.exists():
            missing.append(path)
        elif name is not None and not re.search(rf"^def {name}\(", file.read_text(), flags=re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing


def test_every_reliability_test_file_is_in_the_doc() -> None:
    text = DOC.read_text()
    files = sorted(p.name for p in (ROOT / "tests" / "reliability").glob("test_*.py") if p.name != Path(__file__).name)
    assert [f for f in files if f"tests/reliability/{f}" not in text] == []
