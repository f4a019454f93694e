"""Token texts as vLLM reports them in logprobs (`decoded_token`, the legacy block's `tokens` and keys).

vLLM decodes every id of a logprobs entry on its own (`tokenizer.decode([id])`), then
- puts back leading spaces that decode() strips from SentencePiece pieces (tokenizers whose pre-tokenizer
  is Metaspace: a piece "▁▁x" is "  x", not "x");
- for a text that ends in U+FFFD (a byte-fallback piece of a multi-byte character), decodes it after the
  preceding actual tokens (1 to 4 of them) and keeps the part the piece adds, or "" when the character is
  still incomplete.
`TokenTexts` does the same with its own copy of the model's tokenizer (the model's worker thread owns the
original), caching the per-id texts; it is thread-safe.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

REPLACEMENT = "\ufffd"
MAX_CONTEXT = 4  # enough preceding tokens for any UTF-8 sequence


def leading_space_marker(tokenizer: Any) -> str | None:
    """The Metaspace replacement character of a tokenizer ("▁"), or None when decode() keeps spaces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    except Exception:  # noqa: BLE001 - a tokenizer without a serialisable backend keeps spaces
        return None
    candidates = [pre] + list(pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [])
    for item in candidates:
        if item.get("type") == "Metaspace":
            return item.get("replacement", "\u2581")
    return None


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()
        self._marker = leading_space_marker(self._tokenizer)
        self._pieces: dict[int, str] = {}

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        """The text of a sequence of ids (vLLM's prompt text and completion text)."""
        with self._lock:
            return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def single(self, token_id: int) -> str:
        """`tokenizer.decode([id])`, without the leading-space repair (vLLM's text of a position that has
        no logprobs, such as the first prompt token)."""
        with self._lock:
            return self._tokenizer.decode([int(token_id)]) or ""

    def piece(self, token_id: int) -> str:
        """One id's text with leading spaces restored (cached)."""
        text = self._pieces.get(token_id)
        if text is None:
            text = self.single(token_id)
            if self._marker is not None:
                with self._lock:
                    raw = self._tokenizer.convert_ids_to_tokens(int(token_id)) or ""
                markers = len(raw) - len(raw.lstrip(self._marker))
                missing = markers - (len(text) - len(text.lstrip(" ")))
                text = " " * missing + text if missing > 0 else text
            self._pieces[token_id] = text
        return text

    def position(self, ids: list[int], context: list[int]) -> list[str]:
        """Texts of the ids of one logprobs entry; `context` = the actual tokens of the previous positions
        that have entries (oldest first)."""
        texts = [self.piece(token_id) for token_id in ids]
        for index, text in enumerate(texts):
            if text.endswith(REPLACEMENT):
                texts[index] = self._completed(ids[index], context[-MAX_CONTEXT:])
        return texts

    def _completed(self, token_id: int, context: list[int]) -> str:
        """What `token_id` adds after the shortest suffix of `context` that completes its character."""
        for size in range(1, len(context) + 1):
            tail = context[-size:]
            full = self.decode(tail + [token_id])
            if full.endswith(REPLACEMENT):
                continue
            # Context tokens that are themselves pieces of the character belong to this token's text.
            clean_end = len(tail)
            while clean_end > 0 and self.single(tail[clean_end - 1]).endswith(REPLACEMENT):
                clean_end -= 1
            prefix = self.decode(tail[:clean_end]) if clean_end else ""
            if full.startswith(prefix):
                return full[len(prefix) :]
            common = 0
            for a, b in zip(prefix, full, strict=False):
                if a != b:
                    break
                common += 1
            return full[common:]
        return ""
