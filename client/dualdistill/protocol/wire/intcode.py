"""Bucket code for unsigned integers: one entropy-coded symbol byte + raw low bits per value.

A value x (0 <= x < 2**32) becomes a symbol in [0, 128) plus n "extra" bits:

    x < 16:   symbol = x,                          n = 0
    x >= 16:  L = floor(log2 x)  (4..31),  n = L - 2
              symbol = 16 + 4 * (L - 4) + ((x >> n) & 3),   extra = x & (2**n - 1)

    decode:   x = symbol                        if symbol < 16
              x = ((4 + (symbol - 16) % 4) << n) | extra,  L = 4 + (symbol - 16) // 4, n = L - 2

The symbol carries the magnitude and the two bits below the leading one (the part with a skewed,
compressible distribution); the extra bits are nearly uniform. Splitting them lets zstd's order-0
entropy stage see a small homogeneous alphabet (the same idea as zstd's own offset codes) instead
of multi-byte integers whose byte boundaries cut through the statistics.

Extra bits are concatenated in value order, each value's n bits most-significant first, into a
byte string filled most-significant bit first and zero-padded to a whole byte. Vectorised: no
Python loop per value; fields are placed into 64-bit words with two reduceats, CHUNK values at a time.
"""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.wire import kernels
from dualdistill.protocol.wire.errors import WireFormatError

DIRECT = 16  # values below this are their own symbol
NUM_SYMBOLS = DIRECT + 4 * (32 - 4)  # 128: every value < 2**32
CHUNK = 1 << 16  # values per vectorised step (temporaries of <= 512 KiB)
DECODE_CHUNK = 1 << 14  # the decoder's: its uint64 temporaries (128 KiB) come from the heap, not fresh pages

_SMALL = 1 << 8  # streams up to this many values are packed through a bit matrix (fewer numpy calls)
_PYTHON_INTS = 1 << 7  # streams up to this many values are coded with Python integers (no numpy steps)
_PAIRING_MIN = 1 << 10  # extra-bit fields are joined in pairs while at least this many are left
_U64 = np.uint64
_ONE, _63 = np.uint64(1), np.uint64(63)


def to_symbols(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V,) integers in [0, 2**32) -> symbols (V,) uint8, extra (V,) and extra_bits (V,) (0 for the values
    below DIRECT): uint32 and uint8 if all values are below 2**16 (looked up in tables), else uint64."""
    x = np.asarray(values)
    if x.size and int(x.max()) < len(_SYMBOL_OF):
        at = x.astype(np.intp, copy=False)
        return _SYMBOL_OF.take(at), at.astype(np.uint32) & _EXTRA_MASK_OF.take(at), _NBITS_OF.take(at)
    x = x.astype(np.uint64)
    # floor(log2 x) from the float64 exponent field (exact: integers < 2**53 are exact in float64).
    msb = (np.maximum(x, _U64(DIRECT)).astype(np.float64).view(np.uint64) >> _U64(52)) - _U64(1023)
    nbits = np.where(x >= _U64(DIRECT), msb - _U64(2), _U64(0))
    lead = x >> nbits  # 0b1tt for x >= DIRECT: the leading one and the two bits below; x itself below
    symbols = np.where(x >= _U64(DIRECT), msb * _U64(4) - _U64(4) + lead, x).astype(np.uint8)
    return symbols, x - (lead << nbits), nbits


def symbol_extra_bits(symbols: np.ndarray) -> np.ndarray:
    """(V,) uint8 symbols -> (V,) int8 number of extra bits each carries; raises on symbols >= 128."""
    s = np.asarray(symbols, dtype=np.uint8)
    if s.size and int(s.max()) >= NUM_SYMBOLS:
        raise WireFormatError(f"integer symbol {int(s.max())} out of range (< {NUM_SYMBOLS})")
    return _EXTRA_BITS[s]


# Extra bits per symbol: 0 below DIRECT, then floor(log2 x) - 2 = symbol // 4 - 2.
_EXTRA_BITS = np.array([0] * DIRECT + [s // 4 - 2 for s in range(DIRECT, 256)], dtype=np.int8)


def _tables(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symbol, extra-bit count and extra-bit mask of every value below `size` (a power of 2)."""
    x = np.arange(size, dtype=np.uint64)
    msb = np.zeros(size, dtype=np.int64)
    msb[1:] = np.floor(np.log2(np.arange(1, size))).astype(np.int64)  # exact for integers < 2**16
    nbits = np.where(x >= DIRECT, msb - 2, 0)
    lead = (x >> nbits.astype(np.uint64)).astype(np.int64)
    symbols = np.where(x >= DIRECT, 4 * msb - 4 + lead, x.astype(np.int64))
    return symbols.astype(np.uint8), nbits.astype(np.uint8), ((1 << nbits) - 1).astype(np.uint16)


_SYMBOL_OF, _NBITS_OF, _EXTRA_MASK_OF = _tables(1 << 16)


def _bit_offsets(nbits: np.ndarray, start_bit: int) -> tuple[np.ndarray, np.ndarray]:
    """(word index, bit position from the word's MSB) of each field's first bit in 64-bit words."""
    offset = np.cumsum(nbits, dtype=np.int64) - nbits.astype(np.int64) + start_bit
    return offset >> 6, (offset & 63).astype(np.uint64)


def _place(words: np.ndarray, values: np.ndarray, nbits: np.ndarray, start_bit: int) -> None:
    """OR fields (values' low nbits, MSB first; 0 <= nbits <= 63) into `words` from bit `start_bit` on."""
    word, pos = _bit_offsets(nbits, start_bit)
    # The field top-aligned in 64 bits, then split at the word boundary: `head` stays in its word,
    # `tail` (non-zero only if the field crosses the boundary) goes to the next word. Double shifts
    # keep every shift count below 64 (n = 0 and pos = 0 would otherwise shift by 64).
    top = (values << (_63 - nbits.astype(np.uint64))) << _ONE
    head = top >> pos
    tail = (top << (_63 - pos)) << _ONE
    # Fields are in offset order, so each word's fields are contiguous; their bits are disjoint, so a
    # sum is an OR (also with the previous chunk's last word, hence += rather than =).
    new_word = np.empty(len(word), dtype=bool)
    new_word[0] = True
    np.not_equal(word[1:], word[:-1], out=new_word[1:])
    starts = np.flatnonzero(new_word)
    words[word[starts]] += np.add.reduceat(head, starts)
    words[word[starts] + 1] += np.add.reduceat(tail, starts)


def _pairs(values: np.ndarray, nbits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fields joined two by two (an odd last one with an empty field): the same bit string in half as
    many fields, (values, nbits) in the values' dtype. Only for fields whose pairs fit in that dtype
    (and in 63 bits)."""
    if len(values) % 2:
        values, nbits = np.append(values, values.dtype.type(0)), np.append(nbits, nbits.dtype.type(0))
    right = nbits[1::2].astype(values.dtype)
    return (values[0::2] << right) | values[1::2], nbits[0::2] + right


def _small_extra_bits(extra: np.ndarray, nbits: np.ndarray) -> bytes:
    """The packed extra-bit string of a short stream (few numpy calls: a bit matrix, then packbits)."""
    width = int(nbits.max(initial=0))
    if width == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (extra.astype(np.uint64)[:, None] >> shifts) & _ONE  # (V, width), most significant first
    used = shifts < nbits.astype(np.uint64)[:, None]  # a field's own nbits low bits
    return np.packbits(bits[used].astype(np.uint8)).tobytes()


def _python_encode(values: list[int]) -> tuple[bytes, bytes]:
    """`encode_uints` of a short stream with Python integers: for a few dozen values, cheaper than any
    numpy path's fixed number of array steps. The extra bits accumulate in one big integer."""
    symbols, data, total = bytearray(), 0, 0
    for x in values:
        if x < DIRECT:
            if x < 0:
                raise ValueError(f"integer stream values must be in [0, 2**32), got {x}")
            symbols.append(x)
            continue
        if x >> 32:
            raise ValueError(f"integer stream values must be in [0, 2**32), got {x}")
        top = x.bit_length() - 1
        n = top - 2
        symbols.append(DIRECT + 4 * (top - 4) + ((x >> n) & 3))
        data = (data << n) | (x & ((1 << n) - 1))
        total += n
    pad = -total % 8
    return bytes(symbols), (data << pad).to_bytes((total + pad) // 8, "big")


def encode_uints(values: np.ndarray | list[np.ndarray]) -> tuple[bytes, bytes]:
    """(V,) integers in [0, 2**32), or a list of arrays taken as one sequence -> (symbol bytes (V,),
    packed extra bits).

    Works in chunks of CHUNK values, so the temporaries stay small enough to be reused from the
    allocator's free lists and the CPU cache (whole-array temporaries cost more in page faults than in
    arithmetic); a loop per chunk, not per value. The values' extra-bit fields (empty below DIRECT)
    are joined in pairs while a pair fits in 63 bits: fewer, wider fields to place. With the compiled
    loops (kernels.py) all of that is one pass; without them, a short stream is coded with Python ints.
    """
    arrays = values if isinstance(values, list) else [values]
    if kernels.enabled():  # one compiled pass (kernels.py), the same bytes
        flat = np.asarray(arrays[0]) if len(arrays) == 1 else np.concatenate([np.zeros(0, np.int64), *arrays])
        symbols, extra, done = kernels.encode_fields(np.ascontiguousarray(flat, dtype=np.int64))
        if done < len(flat):
            raise ValueError(f"integer stream values must be in [0, 2**32), got {int(flat[-done - 1])}")
        return symbols.tobytes(), extra.tobytes()
    if len(arrays) == 1 and len(arrays[0]) <= _PYTHON_INTS:
        return _python_encode(np.asarray(arrays[0]).tolist())
    if len(arrays) == 1 and len(arrays[0]) <= _SMALL:
        symbols, extra, nbits = to_symbols(arrays[0])
        return symbols.tobytes(), _small_extra_bits(extra, nbits)
    chunks = [np.asarray(a)[lo : lo + CHUNK] for a in arrays for lo in range(0, len(a), CHUNK)]
    symbols, fields, total = [], [], 0
    for chunk in chunks:
        chunk_symbols, extra, nbits = to_symbols(chunk)
        symbols.append(chunk_symbols)
        top = int(nbits.max())
        if top:
            while len(nbits) >= _PAIRING_MIN and 2 * top <= 63:
                if 2 * top > 8 * extra.itemsize:
                    extra = extra.astype(np.uint64)
                (extra, nbits), top = _pairs(extra, nbits), 2 * top
            bits = int(nbits.sum())
            fields.append((extra, nbits, total))
            total += bits
    words = np.zeros(total // 64 + 2, dtype=np.uint64)
    for extra, nbits, start in fields:
        _place(words, extra, nbits, start)
    symbol_bytes = b"".join(s.tobytes() for s in symbols) if len(symbols) != 1 else symbols[0].tobytes()
    return symbol_bytes, words.astype(">u8").tobytes()[: (total + 7) // 8]


def decode_uints(symbol_bytes: bytes, nbits: np.ndarray, extra_bytes: bytes) -> np.ndarray:
    """Inverse of `encode_uints` given `nbits = symbol_extra_bits(symbols)`: (V,) uint64.

    Values below DIRECT are their symbols; only the others read extra bits (fields in value order, so a
    cumulative sum over just those values gives each field's bit offset), DECODE_CHUNK at a time.
    Raises WireFormatError if the extra-bit stream's length or padding does not match the symbols.
    """
    symbols = np.frombuffer(symbol_bytes, dtype=np.uint8)
    total = int(nbits.sum(dtype=np.int64))
    if len(extra_bytes) != (total + 7) // 8:
        raise WireFormatError(f"extra-bit stream holds {len(extra_bytes)} bytes, expected {(total + 7) // 8}")
    if total % 8 and extra_bytes[-1] & ((1 << (8 - total % 8)) - 1):
        raise WireFormatError("extra-bit stream has non-zero padding bits")
    if total == 0:
        return symbols.astype(np.uint64)
    if kernels.enabled():
        return kernels.decode_fields(symbols, np.frombuffer(extra_bytes, dtype=np.uint8))
    if len(symbols) <= _PYTHON_INTS:
        return _python_decode(symbols, nbits, extra_bytes)
    out = symbols.astype(np.uint64)
    padded = np.zeros((len(extra_bytes) + 7) // 8 * 8 + 16, dtype=np.uint8)
    padded[: len(extra_bytes)] = np.frombuffer(extra_bytes, dtype=np.uint8)
    words = padded.view(">u8").astype(np.uint64)
    wide = np.flatnonzero(nbits)  # the values with extra bits (symbol >= DIRECT)
    start = 0
    for lo in range(0, len(wide), DECODE_CHUNK):
        at = wide[lo : lo + DECODE_CHUNK]
        n = nbits[at].astype(np.uint64)
        offset = np.cumsum(n)
        offset -= n
        offset += np.uint64(start)
        word, pos = (offset >> np.uint64(6)).astype(np.intp), offset & _63
        # The 64 bits starting at the field's first bit, then its top n bits.
        window = (words[word] << pos) | ((words[word + 1] >> _ONE) >> (_63 - pos))
        extra = (window >> _ONE) >> (_63 - n)
        lead = (out[at] & np.uint64(3)) + np.uint64(4)  # the leading one and the two bits below it
        out[at] = (lead << n) | extra
        start += int(n.sum())
    return out


def _python_decode(symbols: np.ndarray, nbits: np.ndarray, extra_bytes: bytes) -> np.ndarray:
    """`decode_uints` of a short stream with Python integers: the extra bits as one big integer read
    field by field (for a few dozen values, cheaper than the numpy path's fixed number of array steps)."""
    data, left = int.from_bytes(extra_bytes, "big"), 8 * len(extra_bytes)
    out = []
    for symbol, n in zip(symbols.tolist(), nbits.tolist(), strict=True):
        if n:
            left -= n
            symbol = ((4 + (symbol & 3)) << n) | ((data >> left) & ((1 << n) - 1))
        out.append(symbol)
    return np.array(out, dtype=np.uint64)
