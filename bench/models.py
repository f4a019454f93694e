"""Model directories the benchmarks serve and load: the tiny fixture, SmolLM2, a random-init Llama.

    model_dir("tiny", workdir)      tests.fixtures.tiny_model (2 layers, hidden 32, 320-token vocab)
    model_dir("smollm2", workdir)   the real SmolLM2-135M-Instruct, prepared once from the GGUF package
    model_dir("llama-1b", workdir)  random-init Llama (1.10B parameters, vocab 49152) for the GPU script
    model_dir("NAME=DIR", ...)      any Hugging Face directory
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Random-init Llama shapes: (hidden, intermediate, layers, heads, kv heads); parameters with vocab 49152.
RANDOM_LLAMAS = {
    "llama-1b": (2048, 5632, 20, 16, 4),  # 1.10B incl. untied 49152 x 2048 embeddings and head
    "llama-500m": (1536, 4096, 14, 12, 4),  # 0.50B
    "llama-small": (256, 512, 2, 4, 2),  # 26M, for the CPU dry run of the GPU script
}
RANDOM_VOCAB = 49152


def model_dir(spec: str, workdir: Path) -> tuple[str, Path]:
    """(served name, HF directory) for a model spec; builds into `workdir` where needed."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, Path(path)
    if spec == "tiny":
        from tests.fixtures.tiny_model import build_tiny_model

        return "tiny", build_tiny_model(workdir / "tiny")
    if spec == "smollm2":
        from dualdistill_server.models import prepare_smollm2

        return "smollm2", prepare_smollm2()
    if spec in RANDOM_LLAMAS:
        return spec, build_random_llama(workdir / spec, spec)
    raise ValueError(f"unknown model spec {spec!r}: tiny, smollm2, {', '.join(RANDOM_LLAMAS)} or NAME=DIR")


def build_random_llama(directory: Path, size: str, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """A random-init LlamaForCausalLM of `size` (RANDOM_LLAMAS) with the tiny fixture's tokenizer.

    The tokenizer knows 320 tokens; the model's vocabulary is RANDOM_VOCAB, as large as SmolLM2's, so the
    output layer and the top-k post-processing cost what a real model's do (benchmarks send random ids).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny_model import build_tiny_model

    hidden, inter, layers, heads, kv = RANDOM_LLAMAS[size]
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    tiny = build_tiny_model(directory.with_name(directory.name + "-tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=RANDOM_VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    # initialising ~1B parameters is minutes on a CPU and seconds on a GPU
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory

