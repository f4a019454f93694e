"""Where samples come from: a model on the teacher service, or a local Hugging Face directory.

Both give `await source.agenerate(prompt, n, ...) -> list[Completion]` with the service's conventions:
`token_ids` are the generated ids only and end with the stop token when finish_reason == "stop"; `text`
is them decoded without special tokens. Each source also names its model (`name`), a `fingerprint` of
its weights and the `tokenizer_sha256` of its tokenizer, which the pairs output records and the pipeline
compares: the negatives are generated from the teacher's prompt token ids, which only mean the same text
to a student with the same tokenizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

from dualdistill.client.types import Completion, ModelInfo

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


class ServedSource:
    """A model served by the teacher service under `info.name` (teacher, or a student SFT model)."""

    def __init__(self, client: Any, info: ModelInfo) -> None:
        self.client = client  # an AsyncTeacherClient
        self.name = info.name
        self.fingerprint = info.fingerprint
        self.tokenizer_sha256 = info.tokenizer_sha256
        self.max_seq_len = info.max_seq_len

    async def agenerate(
        self, prompt: Any, n: int, *, max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[Completion]:
        return await self.client.generate(
            self.name,
            [prompt],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            n=n,
            seed=seed,
        )


def directory_fingerprint(directory: str | Path) -> str:
    """16 hex chars of sha256 over config.json and the weight files (name + bytes, sorted by name)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES)
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _gguf_file(directory: Path) -> str | None:
    """The single .gguf file of a directory without safetensors/bin weights, else None."""
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    plain = any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))
    if len(ggufs) == 1 and not plain:
        return ggufs[0]
    return None


class LocalSource:
    """A causal LM loaded in this process with transformers (`--student-dir DIR`).

    Generation runs in a worker thread under a lock: one generation at a time, so the global torch RNG,
    seeded per call, makes the samples a function of (prompt, n, settings, seed) alone.
    """

    def __init__(self, directory: str | Path, device: str = "cpu", name: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dualdistill.protocol.tokenizer_hash import tokenizer_sha256

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"student directory {directory} does not exist")
        extra = {"gguf_file": g} if (g := _gguf_file(directory)) else {}
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, **extra)
        self.model = AutoModelForCausalLM.from_pretrained(directory, **extra).to(self.device).eval()
        self.name = name or directory.name
        self.fingerprint = directory_fingerprint(directory)
        self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        self.max_seq_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        # Stop ids as the service defines them: tokenizer eos | config eos | generation-config eos.
        self.stop_ids = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.model.config, "eos_token_id", None),
                      getattr(self.model.generation_config, "eos_token_id", None)):
            self.stop_ids |= {int(v) for v in (value if isinstance(value, list) else [value]) if v is not None}
        self._lock = threading.Lock()

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Token ids of a prompt: ids as given, chat messages through the chat template, text encoded."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            ids = self.tokenizer.apply_chat_template(items, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return [int(t) for t in items]

    def generate(
        self, prompt: Any, n: int, *, max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[Completion]:
        import torch

        ids = self.prompt_ids(prompt)
        new_tokens = max(0, min(max_new_tokens, self.max_seq_len - len(ids)))
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False
        }
        if new_tokens == 0:  # no room left under the model's context: nothing to sample
            return [Completion(0, list(ids), [], "", "length") for _ in range(n)]
        stop = sorted(self.stop_ids)
        with self._lock:
            torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(
                    torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                    max_new_tokens=new_tokens,
                    num_return_sequences=n,
                    eos_token_id=stop or None,
                    pad_token_id=stop[0] if stop else 0,
                    top_k=None,
                    **sampling,
                )
        completions = []
        for row in out[:, len(ids) :].tolist():
            tokens, finish = [], "length"
            for token in row:
                tokens.append(int(token))
                if token in self.stop_ids:
                    finish = "stop"
                    break
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            completions.append(Completion(0, list(ids), tokens, text, finish))
        return completions

    async def agenerate(
        self, prompt: Any, n: int, *, max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[Completion]:
        return await asyncio.to_thread(
            self.generate, prompt, n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
