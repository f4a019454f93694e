"""Binary wire codec for teacher logits (`format: "binary"` and `"binary-lossless"`); docs/wire-format.md.

payload = encode(results, lossless=False)   # list[SequenceLogits] -> bytes
results = decode(payload)                   # raises WireFormatError on any malformed payload
"""

from dualdistill.protocol.wire.codec import DEFAULT_MAX_ENTRIES, decode, encode
from dualdistill.protocol.wire.errors import WireFormatError
from dualdistill.protocol.wire.metrics import bytes_per_position, kl_exact_vs_decoded
from dualdistill.protocol.wire.quantize import DEFAULT_TARGET_KL

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TARGET_KL",
    "WireFormatError",
    "bytes_per_position",
    "decode",
    "encode",
    "kl_exact_vs_decoded",
]
