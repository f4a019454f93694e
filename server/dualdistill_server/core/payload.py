"""The binary response formats ("binary", "binary-lossless"), shared by both transports."""

from __future__ import annotations

from dualdistill.protocol.formats import BINARY_CONTENT_TYPE, BINARY_FORMATS, is_lossless

from .service import LogitsResult

__all__ = ["BINARY_CONTENT_TYPE", "BINARY_FORMATS", "binary_payload"]


def binary_payload(result: LogitsResult, response_format: str) -> bytes:
    """`dualdistill.protocol.wire.encode` of the results (docs/wire-format.md); lossless for "binary-lossless"."""
    from dualdistill.protocol import wire

    return wire.encode(result.results, lossless=is_lossless(response_format))
