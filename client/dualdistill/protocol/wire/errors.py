"""The one error type of the wire codec."""

from __future__ import annotations


class WireFormatError(ValueError):
    """A payload is not a valid dualdistill wire payload (truncated, corrupted, wrong version, over limits).

    Raised by `dualdistill.protocol.wire.decode` for every malformed input; callers that get one should treat the
    response as lost (retry the request) rather than inspect partial results.
    """
