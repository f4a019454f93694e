"""The tokenizer handshake against a stock vLLM server, which publishes no tokenizer hash.

What vLLM exposes is checked instead (sans-IO steps, run by `transport_openai.py`):
1. len(tokenizer) <= the model's vocab size (probed, see `openai_steps.probe_limits`);
2. `/tokenizer_info` (only when vLLM runs with `--enable-tokenizer-info-endpoint`): the special tokens
   (bos, eos, pad, unk) and every added token (id -> text) equal the local tokenizer's;
3. `/tokenize` of fixed probe texts (ASCII, digits, runs of spaces, accents, CJK, emoji, code, the special
   tokens' texts) gives the local tokenizer's ids;
4. `/detokenize` of ids spread over the whole local vocabulary gives the local tokenizer's text.
Any difference raises TokenizerMismatchError naming it. Without step 2 the check is weaker (two
tokenizers can agree on the probes and differ elsewhere): it passes with a warning that says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from dualdistill.client.errors import TokenizerMismatchError
from dualdistill.client.openai_steps import Call, Steps
from dualdistill.client.types import ModelInfo

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 plus 30? The answer is 42. 3.14159 1,000,000",
    "  two  spaces,\ttab and\nnew lines\n\n",
    "Café naïve façade — déjà vu; Straße; Ελληνικά; русский",
    "中文字符 日本語 한국어 🙂🚀",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment",
)
DETOKENIZE_IDS = 512  # ids compared by /detokenize, spread evenly over the local vocabulary
DETOKENIZE_CHUNK = 128


@dataclass
class Answers:
    """What the check found (for the message)."""

    problems: list[str] = field(default_factory=list)
    strong: bool = False


def _special_tokens(tokenizer: Any) -> dict[str, str | None]:
    return {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}


def _added_tokens(tokenizer: Any) -> dict[str, str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {str(int(i)): str(getattr(token, "content", token)) for i, token in decoder.items()}


def handshake_steps(tokenizer: Any, info: ModelInfo, answers: Answers) -> Steps:
    local_size = len(tokenizer)
    if info.vocab_size and local_size > info.vocab_size:
        answers.problems.append(f"local tokenizer has {local_size} tokens but model {info.name!r} scores only "
                                f"{info.vocab_size} ids")
    served = yield Call("GET", "/tokenizer_info", allow_status=(404,))
    if "status" not in served:
        answers.strong = True
        for name, local in _special_tokens(tokenizer).items():
            if name in served and served[name] != local:
                answers.problems.append(f"{name} differs: local {local!r} vs served {served[name]!r}")
        served_added = {str(k): str(v) for k, v in (served.get("added_tokens_decoder") or {}).items()}
        local_added = _added_tokens(tokenizer)
        if served_added and served_added != local_added:
            diff = sorted(set(served_added.items()) ^ set(local_added.items()))[:5]
            answers.problems.append(f"added tokens differ (first differences: {diff})")
    for text in PROBE_TEXTS:
        answer = yield Call("POST", "/tokenize", {"model": info.name, "prompt": text, "add_special_tokens": False})
        local = list(tokenizer.encode(text, add_special_tokens=False))
        if list(answer.get("tokens", [])) != local:
            answers.problems.append(f"{text[:30]!r} tokenizes differently: local {local[:8]}... vs served "
                                    f"{list(answer.get('tokens', []))[:8]}...")
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    step = max(1, local_size // DETOKENIZE_IDS)
    ids = [i for i in range(0, local_size, step) if i not in special]
    for lo in range(0, len(ids), DETOKENIZE_CHUNK):
        chunk = ids[lo : lo + DETOKENIZE_CHUNK]
        answer = yield Call("POST", "/detokenize", {"model": info.name, "tokens": chunk})
        if answer.get("prompt") != tokenizer.decode(chunk):
            answers.problems.append(f"ids {chunk[0]}..{chunk[-1]} decode differently")
            break
    if answers.problems:
        raise TokenizerMismatchError(
            f"tokenizer does not match the vLLM server's model {info.name!r}: " + "; ".join(answers.problems)
            + ". Load the tokenizer the vLLM server was started with (its --model directory)."
        )
    if not answers.strong:
        warnings.warn(
            f"the vLLM server does not expose /tokenizer_info, so the tokenizer of {info.name!r} was checked "
            "only by tokenizing probe texts and decoding sampled ids (a weaker check than the dualdistill "
            "tokenizer hash); start vLLM with --enable-tokenizer-info-endpoint for the full check",
            stacklevel=2,
        )
    return info
