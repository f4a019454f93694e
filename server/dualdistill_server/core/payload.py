"""The binary response formats ("binary", "binary-lossless"), shared by both transports."""

from __future__ import annotations

from .service import LogitsResult

BINARY_CONTENT_TYPE = "application/x-dualdistill-logits"
BINARY_FORMATS = ("binary", "binary-lossless")


def binary_payload(result: LogitsResult, response_format: str) -> bytes:
    """`dualdistill.wire.encode` of the results (docs/wire-format.md); lossless for "binary-lossless"."""
    from dualdistill import wire

    if response_format not in BINARY_FORMATS:
        raise ValueError(f"format must be one of {BINARY_FORMATS}, got {response_format!r}")
    return wire.encode(result.results, lossless=response_format == "binary-lossless")
