"""Corrupted input to the wire decoder `dualdistill.protocol.wire.decode`: it raises WireFormatError, never another
exception, never crashes or hangs, and never allocates beyond what the (capped) header counts allow.

Three layers of corruption, each deeper than the last:
1. arbitrary bytes, and valid payloads truncated or with bytes flipped: the framing / CRC must catch them;
2. bytes flipped and the CRC recomputed: the header and stream directory checks must catch them;
3. the raw content of one stream mutated and the payload re-packed with a valid directory and CRC
   (`container.pack`): the semantic checks of the codec itself (counts, ranges, dictionary) must catch
   them, or the payload decodes to well-formed results.
Each layer runs on both decoder paths: the compiled loops (numba) and plain numpy.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.wire import container, intcode
from tests.fixtures.codec_paths import codec_path  # noqa: F401  (every test on both codec paths)

# A deadline per example is the "never hangs" check: every payload here is a few kB at most.
FAST = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow], database=None)
HEADER_SIZE, ENTRY_SIZE = 32, 9


def _results(rng: np.random.Generator, n_seq: int, sample: bool) -> list[SequenceLogits]:
    """Random but valid sequences: rows sorted descending, ids unique per row."""
    out = []
    for _ in range(n_seq):
        n_rows = int(rng.integers(0, 6))
        lengths = rng.integers(0 if sample else 1, 9, size=n_rows)
        ids, logprobs, counts = [], [], []
        for length in lengths:
            ids.append(rng.choice(1000, size=length, replace=False))
            logprobs.append(-np.sort(rng.exponential(3.0, size=length)).astype(np.float32))
            counts.append(rng.integers(1, 20, size=length))
        flat = [np.concatenate(parts) if parts else np.zeros(0) for parts in (ids, logprobs, counts)]
        out.append(
            SequenceLogits(
                row_lengths=lengths, top_ids=flat[0], top_logprobs=flat[1],
                token_logprobs=-rng.exponential(2.0, size=n_rows), tail_logprobs=-rng.exponential(1.0, size=n_rows),
                counts=flat[2] if sample else None,
            )  # fmt: skip
        )
    return out


@st.composite
def payloads(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    results = _results(rng, draw(st.integers(0, 4)), sample=draw(st.booleans()))
    return wire.encode(results, lossless=draw(st.booleans()))


def _check(payload: bytes) -> list[SequenceLogits] | None:
    """Decode; a refusal must be a WireFormatError. A payload that decodes must give well-formed results."""
    try:
        results = wire.decode(payload, max_entries=1 << 20)
    except wire.WireFormatError:
        return None
    for result in results:  # SequenceLogits checks its own shapes on construction; re-check the rest
        assert isinstance(result, SequenceLogits)
        assert result.row_lengths.min(initial=0) >= 0 and result.top_ids.min(initial=0) >= 0
    return results


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(wire.WireFormatError):
        wire.decode(data)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_behind_a_valid_magic_and_crc_are_refused(data: bytes) -> None:
    assert _check(_with_crc(b"DDWL\x01" + data)) is None or data == b""


@FAST
@given(payloads(), st.data())
def test_truncated_payloads_are_refused(payload: bytes, data) -> None:
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(wire.WireFormatError):
        wire.decode(payload[:cut])


@FAST
@given(payloads(), st.data())
def test_flipped_bytes_are_refused_by_the_checksum(payload: bytes, data) -> None:
    at = data.draw(st.integers(0, len(payload) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = bytearray(payload)
    corrupted[at] ^= flip
    with pytest.raises(wire.WireFormatError):
        wire.decode(bytes(corrupted))


@FAST
@given(payloads(), st.data())
def test_flipped_bytes_with_a_recomputed_checksum_never_escape_as_other_errors(payload: bytes, data) -> None:
    body = bytearray(payload[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        # Bias towards the header and directory, where each byte means the most.
        limit = len(body) - 1 if data.draw(st.booleans()) else min(len(body) - 1, HEADER_SIZE + 23 * ENTRY_SIZE)
        body[data.draw(st.integers(0, limit))] ^= data.draw(st.integers(1, 255))
    _check(_with_crc(bytes(body)))


def _raw_streams(payload: bytes) -> tuple[container.Header, list[bytes]]:
    """The header and every stream's raw (decompressed) bytes of a valid payload."""
    header, streams = container.unpack(payload, max_entries=1 << 20)
    raw = []
    for index, (_codec, raw_len, _) in enumerate(streams._directory):
        raw.append(streams.get(index, raw_len))
    return header, raw


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(payloads(), st.data())
def test_semantically_corrupt_streams_in_a_valid_container_are_refused(payload: bytes, data) -> None:
    header, raw = _raw_streams(payload)
    index = data.draw(st.integers(0, len(raw) - 1))
    stream = bytearray(raw[index])
    # Mostly length-preserving: a changed length is caught by the directory check, one level up.
    action = data.draw(st.sampled_from(["flip", "flip", "same-length", "truncate", "extend"]))
    if action == "flip" and stream:
        stream[data.draw(st.integers(0, len(stream) - 1))] ^= data.draw(st.integers(1, 255))
    elif action == "truncate" and stream:
        del stream[data.draw(st.integers(0, len(stream) - 1)) :]
    elif action == "extend":
        stream += data.draw(st.binary(min_size=1, max_size=16))
    elif action == "same-length":
        stream = bytearray(data.draw(st.binary(min_size=len(stream), max_size=len(stream))))
    raw[index] = bytes(stream)
    counts = {name: getattr(header, name) for name in ("n_sequences", "n_rows", "n_entries", "n_dict")}
    if data.draw(st.booleans()):  # and sometimes a header count that no longer matches the streams
        name = data.draw(st.sampled_from(sorted(counts)))
        counts[name] = data.draw(st.integers(0, 2**32 - 1))
    if counts["n_dict"] > counts["n_entries"] or (counts["n_entries"] > 0) != (counts["n_dict"] > 0):
        counts["n_dict"] = min(counts["n_dict"], counts["n_entries"]) or (1 if counts["n_entries"] else 0)
    bad = container.Header(header.variant, header.flags, quant=header.quant, **counts)
    _check(container.pack(bad, raw))


def _uint_pairs(header: container.Header) -> list[int]:
    """Indices of the integer stream pairs' symbol streams (codec.py's stream layout)."""
    pairs = [0, 2, 4, 6, 8] + ([12] if header.flags & container.FLAG_COUNTS else [])
    return pairs + ([14, 16] if header.variant == container.LOSSLESS else [14, 16, 19, 21])


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(payloads(), st.data())
def test_one_wrong_integer_in_a_valid_container_is_refused_or_decodes_cleanly(payload: bytes, data) -> None:
    """A value (a row length, a dictionary gap, a key code, a level...) changed and its stream pair
    re-encoded: lengths and CRC all agree, so only the codec's range and consistency checks stand guard."""
    header, raw = _raw_streams(payload)
    candidates = [i for i in _uint_pairs(header) if raw[i]]
    if not candidates:
        return
    index = data.draw(st.sampled_from(candidates))
    symbols = np.frombuffer(raw[index], dtype=np.uint8)
    values = intcode.decode_uints(raw[index], intcode.symbol_extra_bits(symbols), raw[index + 1]).astype(np.int64)
    at = data.draw(st.integers(0, len(values) - 1))
    values[at] = data.draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([values[at] + 1, max(values[at] - 1, 0)])))
    raw[index], raw[index + 1] = intcode.encode_uints(values)
    _check(container.pack(header, raw))


@pytest.mark.parametrize("count", [2**20 + 1, 2**32 - 1])
@pytest.mark.parametrize("field", [5, 6, 7, 8])  # n_sequences, n_rows, n_entries, n_dict (header words)
def test_huge_header_counts_are_refused_before_allocating(field: int, count: int) -> None:
    payload = wire.encode(_results(np.random.default_rng(0), 2, sample=False))
    body = bytearray(payload[:-4])
    struct.pack_into("<I", body, 8 + 4 * (field - 5), count)
    with pytest.raises(wire.WireFormatError):
        wire.decode(_with_crc(bytes(body)), max_entries=1 << 20)


def test_a_zstd_bomb_stream_is_refused_before_it_is_inflated() -> None:
    """A stream whose zstd frame inflates far beyond its declared length: refused from the frame header."""
    header, raw = _raw_streams(wire.encode(_results(np.random.default_rng(1), 1, sample=False), lossless=True))
    bomb = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\0" * (64 << 20))
    body = bytearray(container.pack(header, raw)[:-4])
    # Stream 0 (rows per sequence): point its directory entry at the bomb, which is appended in its place.
    codec, raw_len, stored = struct.unpack_from("<BII", body, HEADER_SIZE)
    first_body = HEADER_SIZE + 18 * ENTRY_SIZE
    rest = bytes(body[first_body + stored :])
    struct.pack_into("<BII", body, HEADER_SIZE, container.CODEC_ZSTD, raw_len, len(bomb))
    forged = bytes(body[:first_body]) + bomb + rest
    with pytest.raises(wire.WireFormatError):
        wire.decode(_with_crc(forged))
