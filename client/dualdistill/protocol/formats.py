"""Names both sides must spell the same way: logits response formats and the binary content type."""

from __future__ import annotations

# `format` of a logits request: the wire codec (lossy, tuned to a KL target), its lossless variant, or JSON.
LOGITS_FORMATS = ("binary", "binary-lossless", "json")
BINARY_FORMATS = ("binary", "binary-lossless")
# HTTP content type of a binary logits answer (its body is one wire payload).
BINARY_CONTENT_TYPE = "application/x-dualdistill-logits"


def is_lossless(response_format: str) -> bool:
    """Whether a binary format keeps every logprob exactly (the codec's `lossless=` argument)."""
    if response_format not in BINARY_FORMATS:
        raise ValueError(f"format must be one of {BINARY_FORMATS}, got {response_format!r}")
    return response_format == "binary-lossless"
