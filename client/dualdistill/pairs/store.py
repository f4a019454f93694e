"""The run's files, and the append-only writing that makes a run resumable.

For an output `pairs.jsonl` the run owns, next to it:
    pairs.jsonl            kept pairs, one JSON object per line
    pairs.dropped.jsonl    dropped queries, one line each with the reason
    pairs.summary.json     counts and score distributions over both files
    pairs.margins.png      histogram of the chosen pairs' score margins

Crash safety: every record is one `write` of its full line ending in "\\n", and each batch of records is
flushed and fsync'ed, so a crash can only leave a *trailing* line without its newline. `open_store`
truncates such a partial line away, then reads the ids of every complete line of both files: those
queries are done (kept or dropped) and a rerun skips them, so no id is ever written twice.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CorruptOutputError(RuntimeError):
    """A complete line of an output file is not a JSON record with an id (not a crash artefact)."""


def sidecar(out: str | Path, name: str, suffix: str) -> Path:
    """`pairs.jsonl` -> `pairs.<name><suffix>` (the output's last suffix is replaced)."""
    out = Path(out)
    stem = out.stem if out.suffix else out.name
    return out.with_name(f"{stem}.{name}{suffix}")


@dataclass(frozen=True)
class RunPaths:
    out: Path
    dropped: Path
    summary: Path
    margins_png: Path

    @classmethod
    def for_output(cls, out: str | Path) -> RunPaths:
        out = Path(out)
        return cls(out, sidecar(out, "dropped", ".jsonl"), sidecar(out, "summary", ".json"),
                   sidecar(out, "margins", ".png"))


def truncate_partial_line(path: Path) -> int:
    """Cut a trailing line that has no final newline; returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        # Scan back from the end in blocks for the last newline (lines can be long: token id lists).
        position, block = size, 1 << 16
        keep = 0
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            if chunk.endswith(b"\n") and position == size:
                return 0  # the file ends with a complete line
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep


def read_records(path: Path) -> list[dict]:
    """Every line of a JSONL output file as a dict (the file must end with a complete line)."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptOutputError(
                    f"{path}:{number} is not valid JSON ({exc.msg}); this is not a crash artefact (only a "
                    "trailing line can be partial) - fix or remove that line, then rerun"
                ) from None
            if not isinstance(record, dict) or "id" not in record:
                raise CorruptOutputError(f"{path}:{number} is not a record with an 'id'")
            records.append(record)
    return records


def json_safe(value: Any) -> Any:
    """NaN and +-inf -> None (strict JSON has no non-finite numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _line(record: dict) -> bytes:
    return (json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


@dataclass
class PairsStore:
    """The open output files of a run; `done` holds the ids (as strings) already written."""

    paths: RunPaths
    kept: list[dict] = field(default_factory=list)  # records of both files, earlier runs' included
    dropped: list[dict] = field(default_factory=list)
    truncated_bytes: int = 0  # partial trailing bytes cut on open
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> set[str]:
        return {str(r["id"]) for r in self.kept} | {str(r["id"]) for r in self.dropped}

    def write_batch(self, kept: list[dict], dropped: list[dict]) -> None:
        """Append records (each one full line), then flush and fsync both files."""
        for name, records in (("out", kept), ("dropped", dropped)):
            if not records:
                continue
            handle = self._handles[name]
            for record in records:
                handle.write(_line(record))
            handle.flush()
            os.fsync(handle.fileno())
        self.kept.extend(kept)
        self.dropped.extend(dropped)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> PairsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(out: str | Path) -> PairsStore:
    """Repair (truncate partial trailing lines), load what earlier runs wrote, open both files to append."""
    paths = RunPaths.for_output(out)
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    truncated = truncate_partial_line(paths.out) + truncate_partial_line(paths.dropped)
    store = PairsStore(paths, read_records(paths.out), read_records(paths.dropped), truncated)
    store._handles = {"out": open(paths.out, "ab"), "dropped": open(paths.dropped, "ab")}
    return store
