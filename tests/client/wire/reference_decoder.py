"""An independent decoder written from docs/wire-format.md alone: plain Python loops, no numpy, no
dualdistill.protocol.wire. The tests compare it with the library, so the document stays precise enough for a
decoder in another language. Slow by design (a loop per entry); use it on small payloads only.
"""

from __future__ import annotations

import math
import struct
import zlib

import zstandard

HEADER = struct.Struct("<4sBBBBIIIIII")
ENTRY = struct.Struct("<BII")


class BitReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos // 8]
            value = (value << 1) | ((byte >> (7 - self.pos % 8)) & 1)
            self.pos += 1
        return value


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _bits_to_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def decode(payload: bytes) -> list[dict]:
    """-> one dict per sequence with plain lists: row_lengths, top_ids, top_logprobs, token_logprobs,
    tail_logprobs, counts (None unless flag bit 0)."""
    assert payload[:4] == b"DDWL"
    _, version, variant, flags, n_streams, n_seq, n_rows, n_entries, n_dict, quant, _ = HEADER.unpack_from(
        payload
    )
    assert version == 1 and variant in (1, 2)
    assert zlib.crc32(payload[:-4]) == struct.unpack("<I", payload[-4:])[0]
    pos = HEADER.size + n_streams * ENTRY.size
    streams = []
    for i in range(n_streams):
        codec, raw_len, stored_len = ENTRY.unpack_from(payload, HEADER.size + i * ENTRY.size)
        body = payload[pos : pos + stored_len]
        pos += stored_len
        raw = body if codec == 0 else zstandard.ZstdDecompressor().decompress(body)
        assert len(raw) == raw_len
        streams.append(raw)

    def uints(index: int, count: int) -> list[int]:
        symbols, bits = streams[index], BitReader(streams[index + 1])
        assert len(symbols) == count
        out = []
        for s in symbols:
            if s < 16:
                out.append(s)
            else:
                n = 4 + (s - 16) // 4 - 2
                out.append(((4 + (s - 16) % 4) << n) | bits.read(n))
        return out

    def planes(index: int) -> list[float]:
        data = streams[index]
        return [_bits_to_f32(sum(data[b * n_rows + r] << (8 * b) for b in range(4))) for r in range(n_rows)]

    seq_rows = uints(0, n_seq)
    row_lengths = uints(2, n_rows)
    key_to_id, gaps = [], iter(uints(6, n_dict))
    for size in uints(4, 32):  # ids per count class, classes 31 down to 0; each class's ids as gaps
        previous = -1
        for _ in range(size):
            previous += next(gaps) + 1
            key_to_id.append(previous)
    codes = uints(8, n_entries)
    token, tail = planes(10), planes(11)
    counts = uints(12, n_entries) if flags & 1 else None
    nonempty = sum(1 for n in row_lengths if n > 0)

    ids, logprobs = [], []
    if variant == 1:
        firsts, drops = iter(uints(14, nonempty)), iter(uints(16, n_entries - nonempty))
        e = 0
        for length in row_lengths:
            u = 0
            for j in range(length):
                u = next(firsts) if j == 0 else (u - next(drops)) % (1 << 32)
                bits = u & 0x7FFFFFFF if u >= 1 << 31 else (~u) & 0xFFFFFFFF
                logprobs.append(_bits_to_f32(bits))
                ids.append(key_to_id[codes[e]])
                e += 1
    else:
        groups = uints(14, n_rows)
        first_levels = iter(uints(16, nonempty))
        steps = list(streams[18])
        size_over = iter(uints(19, sum(1 for s in steps if s >> 3 == 7)))
        drop_over = iter(uints(21, sum(1 for s in steps if s & 7 == 7)))
        step_iter, codes_iter = iter(steps), iter(codes)
        for length, n_groups in zip(row_lengths, groups, strict=True):
            level, left = None, length
            for g in range(n_groups):
                if g == 0:
                    level = next(first_levels)
                if g < n_groups - 1:
                    s = next(step_iter)
                    a = s >> 3 if s >> 3 < 7 else 7 + next(size_over)
                    b = s & 7 if s & 7 < 7 else 7 + next(drop_over)
                    size = a + 1
                else:
                    size = left
                left -= size
                value = _f32(2.0 * (math.log(level + 0.5) - math.log(quant)))
                key = -1
                for j in range(size):
                    code = next(codes_iter)
                    key = code if j == 0 else key + code + 1
                    ids.append(key_to_id[key])
                    logprobs.append(value)
                if g < n_groups - 1:
                    level -= b + 1

    out, r, e = [], 0, 0
    for rows in seq_rows:
        lengths = row_lengths[r : r + rows]
        n = sum(lengths)
        out.append(
            {
                "row_lengths": lengths,
                "top_ids": ids[e : e + n],
                "top_logprobs": logprobs[e : e + n],
                "token_logprobs": token[r : r + rows],
                "tail_logprobs": tail[r : r + rows],
                "counts": None if counts is None else counts[e : e + n],
            }
        )
        r, e = r + rows, e + n
    return out
