"""Layer pruning: a smaller student that starts from the teacher's weights and shares its tokenizer.

Keeps a subset of the decoder layers (every n-th, or an explicit list), renumbers them 0..m-1, and
writes a normal Hugging Face directory with the source's tokenizer, so teacher and student pass the
tokenizer handshake. Embeddings, final norm and LM head are kept as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from dualdistill_server.models.prepare import Progress, _stderr, write_atomically

# "<prefix>.layers.<index>.<rest>", e.g. model.layers.3.self_attn.q_proj.weight
_LAYER_PARAM = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<rest>.+)$")


def layers_to_keep(num_layers: int, keep: list[int] | int) -> list[int]:
    """keep=n (int >= 1): layers 0, n, 2n, ... < num_layers; keep=[...]: those indices, sorted, unique."""
    if isinstance(keep, int):
        if keep < 1:
            raise ValueError(f"keep every n-th layer needs n >= 1, got {keep}")
        return list(range(0, num_layers, keep))
    kept = sorted(set(int(i) for i in keep))
    if not kept or kept[0] < 0 or kept[-1] >= num_layers:
        raise ValueError(f"layer indices must be a non-empty subset of 0..{num_layers - 1}, got {list(keep)}")
    return kept


def prune_state_dict(state: dict, kept: list[int]) -> dict:
    """Drop the layers not in `kept` and renumber the rest: layers.{kept[j]}.* -> layers.{j}.*."""
    new_index = {old: new for new, old in enumerate(kept)}
    out = {}
    for name, tensor in state.items():
        match = _LAYER_PARAM.match(name)
        if match is None:
            out[name] = tensor
        elif int(match["index"]) in new_index:
            out[f"{match['prefix']}.{new_index[int(match['index'])]}.{match['rest']}"] = tensor
    return out


def prune_layers(
    src_dir: str | Path,
    out_dir: str | Path,
    keep: list[int] | int,
    *,
    force: bool = True,
    progress: Progress = _stderr,
) -> Path:
    """Write a copy of the model in src_dir with only the `keep` layers (see layers_to_keep) to out_dir.

    config.num_hidden_layers (and config.layer_types, when the architecture has it) follow the kept
    layers; the fresh model is built from that config, so every attention module's layer index is 0..m-1.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(src_dir)
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    config = source.config
    kept = layers_to_keep(config.num_hidden_layers, keep)
    progress(f"keeping layers {kept} of {config.num_hidden_layers} from {src_dir}")
    state = prune_state_dict(source.state_dict(), kept)
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    student = AutoModelForCausalLM.from_config(config).to(dtype=source.dtype)
    student.load_state_dict(state, strict=True)
    student.generation_config = source.generation_config

    def build(tmp: Path) -> dict:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"source": str(Path(src_dir).resolve()), "kept_layers": kept, "format": "hf"}

    return write_atomically(Path(out_dir), build, force=force, progress=progress)
