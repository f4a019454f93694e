"""Tokenizer handshake: refuse to train when the local tokenizer is not the teacher's.

Teacher logits are indexed by token id, so a student whose tokenizer maps text to different ids would
silently distil the wrong distribution. The check compares the canonical tokenizer hash
(`dualdistill.protocol.tokenizer_hash.tokenizer_sha256`, which covers vocab, merges and added tokens) and requires
len(tokenizer) <= vocab_size (a model's logits row may be padded beyond the tokenizer, never shorter).
"""

from __future__ import annotations

from typing import Any

from dualdistill.client.errors import TokenizerMismatchError
from dualdistill.client.types import ModelInfo
from dualdistill.protocol.tokenizer_hash import tokenizer_sha256


def check_tokenizer_against(tokenizer: Any, info: ModelInfo) -> ModelInfo:
    """Return `info` when `tokenizer` matches the served model, else raise TokenizerMismatchError."""
    local_hash, local_size = tokenizer_sha256(tokenizer), len(tokenizer)
    problems = []
    if local_hash != info.tokenizer_sha256:
        problems.append(
            f"tokenizer sha256 differs: local {local_hash} vs served {info.tokenizer_sha256 or '(none)'}"
        )
    if local_size > info.vocab_size:
        problems.append(
            f"local tokenizer has {local_size} tokens but model {info.name!r} scores only {info.vocab_size} ids"
        )
    if problems:
        raise TokenizerMismatchError(
            f"tokenizer does not match served model {info.name!r} (fingerprint {info.fingerprint or '?'}): "
            + "; ".join(problems)
            + f". Local: {local_size} tokens, sha256 {local_hash}; served: vocab_size {info.vocab_size}, "
            f"sha256 {info.tokenizer_sha256}. Load the tokenizer the teacher was served with (the model "
            "directory given to `dualdistill serve --model`), or serve a teacher that shares the student's "
            "tokenizer; `dualdistill.protocol.tokenizer_hash.canonical_tokenizer_dict` shows what differs."
        )
    return info
