"""The binary response formats ("binary", "binary-lossless"), shared by both transports."""

from __future__ import annotations

from dualdistill.protocol.formats import BINARY_CONTENT_TYPE, BINARY_FORMATS, is_lossless

from .service import LogitsResult

__all__ = ["BINARY_CONTENT_TYPE", "BINARY_FORMATS", "binary_payload", "encodes_inline"]

# A response of at most this many top-k entries (e.g. one sequence of 64 positions at top_k = 128) is
# encoded on the event loop, whatever its format: a hop to a worker thread and back costs two thread
# wake-ups, each a scheduler wait on a busy machine, and on a small response the encoder's time is mostly
# Python-level steps that hold the GIL, so a worker thread would not leave the loop free for long either.
# Larger responses go to a thread.
INLINE_ENTRIES = 8192


def binary_payload(result: LogitsResult, response_format: str) -> bytes:
    """`dualdistill.protocol.wire.encode` of the results (docs/wire-format.md); lossless for "binary-lossless"."""
    from dualdistill.protocol import wire

    return wire.encode(result.results, lossless=is_lossless(response_format))


def encodes_inline(result: LogitsResult) -> bool:
    """Whether `result` is small enough to encode on the event loop (INLINE_ENTRIES)."""
    return sum(int(r.top_ids.size) for r in result.results) <= INLINE_ENTRIES
