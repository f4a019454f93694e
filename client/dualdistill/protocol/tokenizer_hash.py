"""Canonical tokenizer hash for the tokenizer handshake.

Two tokenizers that map every string to the same ids must hash the same on any machine and library
version, so the hash covers the *mapping*, not a file's bytes: the vocabulary (token -> id, in id order),
the BPE merges (normalised to "a b" strings), and the added tokens with their special flag. File
formatting, key order, library versions and unrelated config (padding side, model_max_length) are left out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _merges(tokenizer: Any) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return []
    model = json.loads(backend.to_str()).get("model", {})
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def canonical_tokenizer_dict(tokenizer: Any) -> dict[str, Any]:
    """The canonical content the hash is taken over (useful to diff two tokenizers)."""
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {
        "vocab": sorted(([tok, int(i)] for tok, i in vocab.items()), key=lambda pair: pair[1]),
        "merges": _merges(tokenizer),
        "added_tokens": sorted(
            ([str(tok), int(i), bool(getattr(tok, "special", False))] for i, tok in added.items()),
            key=lambda row: row[1],
        ),
    }


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hex SHA-256 of the canonical serialization (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(canonical_tokenizer_dict(tokenizer), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
