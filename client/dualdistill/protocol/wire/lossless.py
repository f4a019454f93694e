"""Entry coding of the lossless variant: exact float32 bits as within-row differences.

Float32 bit patterns are mapped to uint32 so that integer order equals float order:

    u = ~bits                  if the sign bit is set
    u = bits | 0x80000000      otherwise               (inverse: bits = u & 0x7FFFFFFF if u >= 2**31 else ~u)

Rows are sorted by logprob descending, so u falls along a row and the differences
u[e-1] - u[e] (mod 2**32) are small non-negative numbers (much shorter than 32 bits). Any input
order, NaN or +-inf still round-trips bit-exactly: the modular difference is exact for every pair.
"""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.wire.container import variant_offsets
from dualdistill.protocol.wire.errors import WireFormatError
from dualdistill.protocol.wire.ragged import row_starts, segment_cumsum

_SIGN = np.uint32(0x80000000)


def ordered_bits(values: np.ndarray) -> np.ndarray:
    """(N,) float32 -> (N,) uint32 in float order."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def from_ordered_bits(u: np.ndarray) -> np.ndarray:
    """Inverse of `ordered_bits`: (N,) uint32 -> (N,) float32."""
    u = u.astype(np.uint32)
    return np.where(u & _SIGN, u & ~_SIGN, ~u).astype(np.uint32).view(np.float32)


# The variant's own streams in payload order (integer stream pairs).
STREAMS = (("first_values", "uint"), ("value_drops", "uint"))
OFFSETS = variant_offsets(STREAMS)  # stream index of each, as the payload lays them out


def encode_entries(row_lengths: np.ndarray, logprobs: np.ndarray) -> dict[str, np.ndarray]:
    """One block of rows -> {"first_values": (R_nonempty,) u of each row's first entry,
    "value_drops": (N - R_nonempty,) u[e-1] - u[e] mod 2**32 for the other entries}."""
    u = ordered_bits(logprobs)
    rows, n = len(row_lengths), len(u)
    if n and n == rows * int(row_lengths.max()):  # uniform rows: (R, k) views, no masks
        u = u.reshape(rows, -1)
        return {"first_values": u[:, 0], "value_drops": (u[:, :-1] - u[:, 1:]).reshape(-1)}
    starts = row_starts(row_lengths, n)
    return {"first_values": u[starts], "value_drops": (u[:-1] - u[1:])[~starts[1:]]}


def decode_entries(row_lengths: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    """Inverse of `encode_entries` for one block: (N,) float32."""
    first, drops = values["first_values"], values["value_drops"]
    if max(int(first.max(initial=0)), int(drops.max(initial=0))) > 0xFFFFFFFF:
        raise WireFormatError("lossless value out of the 32-bit range")
    n = len(first) + len(drops)
    starts = row_starts(row_lengths, n)
    step = np.zeros(n, dtype=np.uint64)
    step[starts] = first
    step[~starts] = np.uint64(0) - drops.astype(np.uint64)  # uint64 wraps, so the low 32 bits are exact
    u = segment_cumsum(step, starts) & np.uint64(0xFFFFFFFF)
    return from_ordered_bits(u)
