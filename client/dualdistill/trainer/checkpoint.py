"""Checkpoints that let `--resume` continue a run bit for bit.

    OUTPUT/checkpoints/step-000120/
        model.safetensors, config.json, tokenizer files   `save_pretrained` (an HF model directory); under
                             parallel=fsdp only in the run's last checkpoint, gathered from the shards
        sharded/             parallel=fsdp: every rank's shards of the weights and AdamW state (sharded.py)
        trainer_state.pt     optimizer (unsharded runs) + scheduler state dicts, step, data position
        rng-rank0.pt ...     python / numpy / torch (/ cuda) RNG states, one file per rank
        train_config.json    the resolved TrainConfig
        trainer_state.json   the same facts for people: step, epoch, position, teacher fingerprints

Everything is plain tensors, numbers, lists and dicts, saved with safetensors or `torch.save` and read
with `torch.load(weights_only=True)`, so loading a checkpoint never unpickles arbitrary objects.
A checkpoint is written into `.tmp-step-N` and renamed when complete, so a run killed mid-save leaves
the previous checkpoint as the newest; `latest_checkpoint` never returns a half-written one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualdistill.trainer import distributed as dd
from dualdistill.trainer.parallel import is_sharded
from dualdistill.trainer.sharded import has_sharded_state, hf_state_dict, load_sharded, save_sharded

__all__ = ["is_sharded_checkpoint", "latest_checkpoint", "list_checkpoints", "load_sharded", "save_checkpoint"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a checkpoint written under parallel=fsdp (its weights and optimizer state are shards)."""
    return has_sharded_state(path)


def save_checkpoint(
    output_dir: str | Path,
    *,
    step: int,
    model: Any,
    forward: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_position: tuple[int, int],
    config_json: str,
    facts: dict[str, Any],
    info: dd.DistInfo,
    keep: int,
    export_hf: bool = True,
) -> Path:
    """Write checkpoint `step` (all ranks call this; rank 0 writes the shared parts). Returns its path.

    `model` is the HF model, `forward` what trains it (the FSDP root when sharded). A sharded run writes
    its shards, and the HF directory only when `export_hf` (the loop asks for it at the last step)."""
    final = step_dir(output_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    sharded = is_sharded(forward)
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if not sharded:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        epoch, position = data_position
        state = {
            "step": step,
            "epoch": epoch,
            "position": position,
            "world_size": info.world_size,
            "scheduler": scheduler.state_dict(),
        }
        if not sharded:
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, tmp / STATE_FILE)
        (tmp / "train_config.json").write_text(config_json + "\n", encoding="utf-8")
        summary = {"step": step, "epoch": epoch, "position": position, "world_size": info.world_size, **facts}
        (tmp / "trainer_state.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    dd.barrier(info)  # the directory exists before the other ranks write into it
    if sharded:
        save_sharded(tmp, forward, optimizer)
        if export_hf:
            weights = hf_state_dict(forward)  # every rank gathers; rank 0 receives
            if info.is_main:
                model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
    torch.save(rng_state(), tmp / f"rng-rank{info.rank}.pt")
    dd.barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dd.barrier(info)
    return final


def load_trainer_state(path: Path, info: dd.DistInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, this rank's RNG state) of a checkpoint directory."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    rng_file = path / f"rng-rank{info.rank}.pt"
    if not rng_file.exists():
        raise FileNotFoundError(
            f"{rng_file} is missing: the checkpoint was written by {state['world_size']} rank(s); resume with "
            "the same number of processes for a bit-exact continuation"
        )
    return state, torch.load(rng_file, map_location="cpu", weights_only=True)
