"""The bucket integer code and its bit packing, against a plain-Python implementation of the text in
docs/wire-format.md §3."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualdistill.protocol.wire import intcode
from dualdistill.protocol.wire.errors import WireFormatError


def reference_encode(values: list[int]) -> tuple[bytes, bytes]:
    symbols, bits = [], []
    for x in values:
        if x < 16:
            symbols.append(x)
            continue
        msb = x.bit_length() - 1
        n = msb - 2
        symbols.append(16 + 4 * (msb - 4) + ((x >> n) & 3))
        bits.extend((x >> (n - 1 - i)) & 1 for i in range(n))
    bits += [0] * (-len(bits) % 8)
    packed = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    return bytes(symbols), packed


EDGES = [0, 1, 15, 16, 17, 31, 32, 63, 64, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
uint32 = st.integers(min_value=0, max_value=2**32 - 1)
values_strategy = st.lists(st.one_of(uint32, st.sampled_from(EDGES), st.integers(0, 40)), max_size=300)


@given(values_strategy)
@settings(max_examples=100, deadline=None)
def test_bucket_code_matches_the_reference_and_round_trips(values):
    symbols, extra = intcode.encode_uints(np.array(values, dtype=np.uint64))
    assert (symbols, extra) == reference_encode(values)
    nbits = intcode.symbol_extra_bits(np.frombuffer(symbols, dtype=np.uint8))
    decoded = intcode.decode_uints(symbols, nbits, extra)
    assert decoded.tolist() == values


def test_round_trip_across_chunks_and_word_boundaries():
    rng = np.random.default_rng(0)
    # More values than one chunk, widths crossing 64-bit word boundaries at every offset.
    values = rng.integers(0, 2**32, 3 * intcode.CHUNK + 17, dtype=np.uint64) >> rng.integers(
        0, 32, 3 * intcode.CHUNK + 17
    ).astype(np.uint64)
    symbols, extra = intcode.encode_uints(values)
    nbits = intcode.symbol_extra_bits(np.frombuffer(symbols, dtype=np.uint8))
    np.testing.assert_array_equal(intcode.decode_uints(symbols, nbits, extra), values)
    assert reference_encode(values.tolist()) == (symbols, extra)


@pytest.mark.parametrize("top", [16, 300, 1 << 16])
def test_long_small_value_streams_match_the_reference(top):
    """Values below 2**16 take the table path, and long streams join their extra-bit fields in pairs; an
    odd count, mostly-empty fields and a list of arrays (one sequence) must give the same bytes."""
    rng = np.random.default_rng(top)
    values = rng.integers(0, top, 2 * intcode.CHUNK + 4099)
    values[rng.random(len(values)) < 0.5] = 3  # runs of fields without extra bits
    expected = reference_encode(values.tolist())
    assert intcode.encode_uints(values) == expected
    assert intcode.encode_uints(values.astype(np.uint32)) == expected
    cuts = [0, 5, 1000, intcode.CHUNK + 7, len(values)]
    assert intcode.encode_uints([values[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]) == expected


@pytest.mark.parametrize("n", [0, 1, 7, intcode._SMALL, intcode._SMALL + 1])
def test_short_streams_match_the_reference(n):
    """Short streams are packed another way (a bit matrix); all widths up to 29 bits."""
    rng = np.random.default_rng(n)
    values = (rng.integers(0, 2**32, n, dtype=np.uint64) >> rng.integers(0, 33, n).astype(np.uint64)).tolist()
    assert intcode.encode_uints(np.array(values, dtype=np.uint64)) == reference_encode(values)


def test_symbol_table():
    assert intcode.NUM_SYMBOLS == 128
    assert intcode.encode_uints(np.array([2**32 - 1], dtype=np.uint64))[0] == bytes([127])
    assert intcode.symbol_extra_bits(np.arange(128, dtype=np.uint8)).max() == 29


@pytest.mark.parametrize(
    "symbols, extra, message",
    [
        (bytes([200]), b"", "out of range"),
        (bytes([16]), b"", "holds 0 bytes"),  # symbol 16 carries 2 extra bits
        (bytes([16]), b"\x00\x00", "holds 2 bytes"),
        (bytes([16]), b"\x20", "padding"),  # the 2 bits used, then a stray 1
    ],
)
def test_malformed_integer_streams_are_rejected(symbols, extra, message):
    with pytest.raises(WireFormatError, match=message):
        s = np.frombuffer(symbols, dtype=np.uint8)
        intcode.decode_uints(symbols, intcode.symbol_extra_bits(s), extra)
