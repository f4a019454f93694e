"""The binary response formats ("binary", "binary-lossless"), shared by both transports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dualdistill.protocol.formats import BINARY_CONTENT_TYPE, BINARY_FORMATS, is_lossless

if TYPE_CHECKING:  # the batcher imports INLINE_ENTRIES from here, and service.py imports the batcher
    from .service import LogitsResult

__all__ = ["BINARY_CONTENT_TYPE", "BINARY_FORMATS", "binary_payload", "encodes_inline"]

# On an idle server, a response of at most this many top-k entries (e.g. one sequence of 64 positions at
# top_k = 128) is encoded on the event loop, whatever its format: a hop to a worker thread and back costs
# two thread wake-ups, each a scheduler wait on a busy machine, and on a small response the encoder's time
# is mostly Python-level steps that hold the GIL anyway. With other requests in flight the encoding goes to
# a thread even so: a loop that encodes a finished batch's responses one after another admits no new
# request meanwhile, so the model would idle and the next batch start late. The batcher converts an engine's
# results on the loop by the same rule (core/batcher.py).
INLINE_ENTRIES = 8192


def binary_payload(result: LogitsResult, response_format: str) -> bytes:
    """`dualdistill.protocol.wire.encode` of the results (docs/wire-format.md); lossless for "binary-lossless"."""
    from dualdistill.protocol import wire

    return wire.encode(result.results, lossless=is_lossless(response_format))


def encodes_inline(result: LogitsResult, others_in_flight: int) -> bool:
    """Whether to encode `result` on the event loop: nothing else in flight (`TeacherService.active_requests`
    once this request's result is in) and at most INLINE_ENTRIES top-k entries."""
    return others_in_flight == 0 and sum(int(r.top_ids.size) for r in result.results) <= INLINE_ENTRIES
