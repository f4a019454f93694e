"""Fingerprint of a model that vLLM loads: hashed from the files, since vLLM's weights live in its workers.

fingerprint = sha256(canonical config JSON || for each weight file in name order: name, size, bytes ||
serving dtype || engine), first 16 hex chars. The hf engine hashes its loaded tensors instead
(models/fingerprint.py); both end with the engine's name, so the result cache never serves rows of one
engine for the other (they agree to ~1e-5, not bit for bit). Hashing reads every weight file once, at
about disk speed (a 16 GB teacher adds tens of seconds to the load).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dualdistill_server.models.fingerprint import canonical_config

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 1 << 22


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model directory, in name order (subfolders included)."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def files_fingerprint(directory: str | Path, config: Any, dtype: str, engine: str) -> str:
    """16 hex chars of sha256 over (canonical config, every weight file, serving dtype, engine)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    digest.update(canonical_config(config).encode("utf-8"))
    for path in weight_files(directory):
        name = path.relative_to(directory).as_posix()
        digest.update(json.dumps([name, path.stat().st_size], separators=(",", ":")).encode("utf-8"))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    digest.update(dtype.encode("utf-8"))
    digest.update(f"|engine={engine}".encode())
    return digest.hexdigest()[:16]
