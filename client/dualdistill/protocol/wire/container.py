"""Payload container: fixed header, stream directory, one zstd frame (or raw bytes) per stream, CRC-32.

    payload = header (32 B) | directory (n_streams x 9 B) | stream bodies | crc32 (4 B)

All integers little-endian. The CRC-32 (zlib / IEEE 802.3 polynomial, as `zlib.crc32`) covers every
byte before it, so a truncated or bit-flipped payload is rejected before anything is decompressed.
Each stream's decoded length is checked against the length the header's counts imply *before* it is
decompressed, so a hostile payload cannot make the decoder allocate more than those counts allow
(and the counts are capped by `max_entries`). docs/wire-format.md is the normative description.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate

import numpy as np
import zstandard

from dualdistill.protocol.wire.errors import WireFormatError
from dualdistill.protocol.wire.intcode import decode_uints, encode_uints, symbol_extra_bits
from dualdistill.protocol.wire.quantize import MAX_LEVELS

MAGIC = b"DDWL"
VERSION = 1
LOSSLESS, LOSSY = 1, 2  # variant byte
FLAG_COUNTS = 0x01  # the response is in "sample" mode: per-entry counts are present
STREAM_COUNTS = {LOSSLESS: 18, LOSSY: 23}  # streams per variant (codec.py lists them)
CODEC_RAW, CODEC_ZSTD = 0, 1
ZSTD_LEVEL = 3  # entropy-limited streams: level 19 is only 0.5% smaller and 2.4x slower to encode
MAX_WINDOW = 1 << 27  # decoder refuses zstd frames asking for a larger window (memory bound)

# magic, version, variant, flags, num_streams, n_sequences, n_rows, n_entries, n_dict, quant, reserved
_HEADER = struct.Struct("<4sBBBBIIIIII")
_ENTRY = struct.Struct("<BII")  # codec, raw_len, stored_len
_CRC = struct.Struct("<I")
_local = threading.local()  # per-thread zstd compressor


@dataclass(frozen=True)
class Header:
    variant: int  # LOSSLESS or LOSSY
    flags: int  # FLAG_COUNTS or 0
    n_sequences: int
    n_rows: int  # all sequences' rows
    n_entries: int  # all rows' entries
    n_dict: int  # distinct ids in the payload
    quant: int  # LOSSY: levels per unit of sqrt(probability) (M); LOSSLESS: 0


class Stream(IntEnum):
    """Index of each stream every payload has (docs/wire-format.md); an integer pair takes two indices."""

    ROWS_PER_SEQUENCE = 0  # uint pair
    ENTRIES_PER_ROW = 2  # uint pair
    IDS_PER_CLASS = 4  # uint pair
    DICTIONARY_GAPS = 6  # uint pair
    KEY_CODES = 8  # uint pair
    TOKEN_LOGPROBS = 10  # float32 byte planes
    TAIL_LOGPROBS = 11  # float32 byte planes
    COUNTS = 12  # uint pair, "sample" mode only (both empty otherwise)
    VARIANT = 14  # first of the variant's own streams (lossy.STREAMS / lossless.STREAMS)


def variant_offsets(layout: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Stream index of each of a variant's own streams: a "uint" stream takes two, a "bytes" one."""
    offsets, at = {}, int(Stream.VARIANT)
    for name, kind in layout:
        offsets[name] = at
        at += 2 if kind == "uint" else 1
    return offsets


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Header + directory + bodies + CRC. Each stream is stored zstd-compressed unless that is not smaller."""
    if len(streams) != STREAM_COUNTS[header.variant]:
        raise ValueError(
            f"variant {header.variant} has {STREAM_COUNTS[header.variant]} streams, got {len(streams)}"
        )
    cctx = _compressor()
    directory, bodies = [], []
    for raw in streams:
        packed = cctx.compress(raw) if raw else b""
        codec, body = (CODEC_ZSTD, packed) if len(packed) < len(raw) else (CODEC_RAW, raw)
        directory.append(_ENTRY.pack(codec, len(raw), len(body)))
        bodies.append(body)
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        header.variant,
        header.flags,
        len(streams),
        header.n_sequences,
        header.n_rows,
        header.n_entries,
        header.n_dict,
        header.quant,
        0,
    )
    out = b"".join([head, *directory, *bodies])
    return out + _CRC.pack(zlib.crc32(out))


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (one per payload cost about as much as decompressing a small one's streams)."""
    dctx = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return dctx


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor (a ZstdCompressor is not thread-safe; making one per payload costs more
    than compressing the small streams)."""
    cctx = getattr(_local, "compressor", None)
    if cctx is None:
        cctx = _local.compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_checksum=False
        )
    return cctx


class Streams:
    """Validated access to a payload's streams: `get(i, expected_len)` decompresses stream i."""

    def __init__(self, body: memoryview, directory: list[tuple[int, int, int]]):
        self._body, self._directory = body, directory
        self._offsets = list(accumulate((stored for _, _, stored in directory), initial=0))
        self._dctx = _decompressor()

    def get(self, index: int, expected_len: int) -> bytes:
        _check_exact(index, self._directory[index][1], expected_len)
        return self._read(index)

    def joined(self, limits: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Every stream at once, for a decoder that checks the rest itself: (all streams' bytes in one uint8
        array, (n_streams + 1,) int64 offsets). Each stream's declared length is checked before anything is
        decompressed, against its limit: ("exact", n) where the header fixes it, ("max", n) where it
        bounds it, ("extra", 0) for the extra bits of the integer stream before it (at most 29 bits per
        value of that stream's declared length). One buffer of the declared total takes them in turn."""
        lengths = [raw_len for _, raw_len, _ in self._directory]
        for index, (kind, limit) in enumerate(limits):
            raw_len = lengths[index]
            if kind == "exact":
                _check_exact(index, raw_len, limit)
            limit = (29 * lengths[index - 1] + 7) // 8 if kind == "extra" else limit
            if raw_len > limit:
                raise WireFormatError(f"stream {index} declares {raw_len} bytes, above the {limit} its header allows")
        starts = list(accumulate(lengths, initial=0))
        out = np.empty(starts[-1], dtype=np.uint8)
        view, body = memoryview(out), self._body
        for index, (codec, _, _) in enumerate(self._directory):
            if codec == CODEC_RAW:  # copied straight from the payload (no bytes object in between)
                view[starts[index] : starts[index + 1]] = body[self._offsets[index] : self._offsets[index + 1]]
            else:
                view[starts[index] : starts[index + 1]] = self._read(index)
        return out, np.array(starts, dtype=np.int64)

    def _read(self, index: int) -> bytes:
        codec, raw_len, _ = self._directory[index]
        data = self._body[self._offsets[index] : self._offsets[index + 1]]
        if codec == CODEC_RAW:
            return bytes(data)
        if raw_len == 0:
            raise WireFormatError(f"stream {index}: an empty stream must be stored raw")
        try:
            if zstandard.frame_content_size(data) != raw_len:  # checked before the decoder allocates it
                raise WireFormatError(f"stream {index}: zstd frame content size does not match the directory")
            return self._dctx.decompress(data, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise WireFormatError(f"stream {index}: invalid zstd frame ({exc})") from None

    def get_uints(self, index: int, count: int) -> np.ndarray:
        """Integer stream pair (symbols at `index`, extra bits at `index + 1`): (count,) uint64."""
        symbols = self.get(index, count)
        nbits = symbol_extra_bits(np.frombuffer(symbols, dtype=np.uint8))
        extra = self.get(index + 1, (int(nbits.sum(dtype=np.int64)) + 7) // 8)
        return decode_uints(symbols, nbits, extra)


def _check_exact(index: int, raw_len: int, expected_len: int) -> None:
    if raw_len != expected_len:
        raise WireFormatError(f"stream {index} declares {raw_len} bytes, the header implies {expected_len}")


def uint_streams(values: np.ndarray | list[np.ndarray]) -> list[bytes]:
    """The two streams (symbols, extra bits) of an integer stream pair; values in [0, 2**32), as one array
    or a list of arrays taken as one sequence."""
    return list(encode_uints(values))


def unpack(payload: bytes, *, max_entries: int) -> tuple[Header, Streams]:
    """Check framing, version, CRC and size limits; return the header and lazy stream access."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload).cast("B")
    if len(view) < _HEADER.size + _CRC.size or bytes(view[:4]) != MAGIC:
        raise WireFormatError("not a dualdistill wire payload (bad magic or too short)")
    magic, version, variant, flags, n_streams, n_seq, n_rows, n_entries, n_dict, quant, reserved = (
        _HEADER.unpack_from(view)
    )
    if version != VERSION:
        raise WireFormatError(
            f"wire format version {version} is not supported (this decoder reads {VERSION})"
        )
    (crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[: len(view) - _CRC.size]) != crc:
        raise WireFormatError("payload checksum mismatch (truncated or corrupted)")
    if (
        variant not in STREAM_COUNTS
        or flags & ~FLAG_COUNTS
        or n_streams != STREAM_COUNTS[variant]
        or reserved
    ):
        raise WireFormatError(f"unknown variant {variant}, flags {flags:#x} or stream count {n_streams}")
    if len(view) < _HEADER.size + n_streams * _ENTRY.size + _CRC.size:
        raise WireFormatError("payload too short for its stream directory")
    for name, value in (("entries", n_entries), ("rows", n_rows), ("sequences", n_seq)):
        if value > max_entries:
            raise WireFormatError(f"payload holds {value} {name}, above max_entries={max_entries}")
    if n_dict > n_entries or (n_entries > 0) != (n_dict > 0):
        raise WireFormatError(f"dictionary size {n_dict} inconsistent with {n_entries} entries")
    if (variant == LOSSY) != (quant > 0) or quant > MAX_LEVELS:
        raise WireFormatError(f"quantizer parameter {quant} invalid for variant {variant}")
    directory = list(_ENTRY.iter_unpack(view[_HEADER.size : _HEADER.size + n_streams * _ENTRY.size]))
    body = view[_HEADER.size + n_streams * _ENTRY.size : len(view) - _CRC.size]
    if sum(stored for _, _, stored in directory) != len(body):
        raise WireFormatError("stream directory does not match the payload length")
    for index, (codec, raw_len, stored) in enumerate(directory):
        if codec not in (CODEC_RAW, CODEC_ZSTD) or (codec == CODEC_RAW and raw_len != stored):
            raise WireFormatError(f"stream {index}: bad codec {codec} or length")
    header = Header(variant, flags, n_seq, n_rows, n_entries, n_dict, quant)
    return header, Streams(body, directory)
