"""Malformed payloads: truncated, bit-flipped, random or hostile ones must raise WireFormatError, never
another exception, a hang, an out-of-bounds read or an allocation beyond what the header's capped
counts allow."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.wire import WireFormatError

_HEADER = struct.Struct("<4sBBBBIIIIII")
_LIMIT = 50_000  # max_entries for these tests: every allocation is bounded by it


def _payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    logprobs = np.log(rng.dirichlet(np.full(500, 0.05), size=12) + 1e-30)
    ids = np.argsort(-logprobs, axis=1)[:, :24]
    topk = SequenceLogits.from_dense(
        ids, np.take_along_axis(logprobs, ids, 1), rng.normal(-2, 1, 12), np.full(12, -3.0)
    )
    sample = SequenceLogits(
        row_lengths=[3, 0, 2],
        top_ids=[9, 4, 1, 7, 8],
        top_logprobs=[-0.1, -2, -5, -0.3, -1],
        token_logprobs=[-1, -2, -3],
        tail_logprobs=[-4, 0, -2],
        counts=[30, 2, 1, 20, 13],
    )
    return {
        "lossy": wire.encode([topk, topk]),
        "lossless": wire.encode([topk], lossless=True),
        "sample-lossy": wire.encode([sample]),
        "sample-lossless": wire.encode([sample, sample], lossless=True),
    }


PAYLOADS = _payloads()
payload_names = st.sampled_from(sorted(PAYLOADS))


def _reseal(data: bytes | bytearray) -> bytes:
    """Recompute the CRC so that a tampered payload reaches the deeper checks."""
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def _decode_bounded(payload: bytes) -> list[SequenceLogits] | None:
    """decode() with a small limit; returns None on WireFormatError, checks the memory peak."""
    tracemalloc.start()
    try:
        return wire.decode(payload, max_entries=_LIMIT)
    except WireFormatError:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 * 2**20, f"decode allocated {peak} bytes"


@given(payload_names, st.data())
@settings(max_examples=150, deadline=None)
def test_truncated_payloads_are_rejected(name, data):
    payload = PAYLOADS[name]
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(WireFormatError):
        wire.decode(payload[:cut])


@given(payload_names, st.lists(st.integers(0, 10**9), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_bit_flips_are_rejected(name, positions):
    corrupted = bytearray(PAYLOADS[name])
    for position in positions:
        corrupted[position % len(corrupted)] ^= 1 << (position // len(corrupted) % 8)
    if bytes(corrupted) == PAYLOADS[name]:  # an even number of flips of the same bit
        return
    with pytest.raises(WireFormatError):
        wire.decode(bytes(corrupted))


@given(st.binary(max_size=400), st.booleans())
@settings(max_examples=200, deadline=None)
def test_random_bytes_are_rejected(data, with_magic):
    payload = (b"DDWL\x01" + data) if with_magic else data
    with pytest.raises(WireFormatError):
        wire.decode(payload)


@given(payload_names, st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tampered_payloads_with_a_valid_checksum_fail_cleanly(name, data):
    """Past the CRC: overwrite bytes anywhere (header, directory, bodies) and reseal. The decoder may
    return some other valid response, but only ever raises WireFormatError and stays within memory."""
    payload = bytearray(PAYLOADS[name])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(4, len(payload) - 5))
        payload[at : at + 4] = data.draw(st.binary(min_size=1, max_size=4)).ljust(4, b"\0")[
            : len(payload) - 4 - at
        ]
    decoded = _decode_bounded(_reseal(payload))
    assert decoded is None or all(isinstance(r, SequenceLogits) for r in decoded)


@pytest.mark.parametrize("field", ["n_sequences", "n_rows", "n_entries", "n_dict"])
def test_huge_declared_counts_are_refused_before_allocating(field):
    fields = list(_HEADER.unpack_from(PAYLOADS["lossy"]))
    fields[
        [
            "magic",
            "version",
            "variant",
            "flags",
            "n_streams",
            "n_sequences",
            "n_rows",
            "n_entries",
            "n_dict",
            "quant",
            "reserved",
        ].index(field)
    ] = 2**32 - 1
    payload = _reseal(_HEADER.pack(*fields) + PAYLOADS["lossy"][_HEADER.size :])
    assert _decode_bounded(payload) is None
    with pytest.raises(WireFormatError):
        wire.decode(payload)  # also with the default limit


def test_a_zstd_frame_declaring_a_huge_size_is_refused_before_allocating():
    payload = PAYLOADS["lossless"]
    n_streams = payload[7]
    directory = [struct.unpack_from("<BII", payload, 32 + 9 * i) for i in range(n_streams)]
    index = next(i for i, (codec, _, _) in enumerate(directory) if codec == 1)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 2**20)  # content size 1 MiB in its frame header
    directory[index] = (1, directory[index][1], len(bomb))
    start = 32 + 9 * n_streams + sum(stored for _, _, stored in directory[:index])
    old_stored = struct.unpack_from("<BII", payload, 32 + 9 * index)[2]
    body = payload[32 + 9 * n_streams : start] + bomb + payload[start + old_stored : -4]
    head = payload[:32] + b"".join(struct.pack("<BII", *entry) for entry in directory)
    with pytest.raises(WireFormatError, match="content size|declares"):
        wire.decode(_reseal(head + body + b"\0\0\0\0"))


def test_streams_longer_than_the_header_allows_are_refused_before_anything_is_decompressed():
    """A 2 KB payload declaring 2**16 of everything, its streams zero-filled zstd frames of a little more than
    each may hold (every extra-bit stream 4 bytes per value of its symbol stream, where at most 29 bits
    fit): refused, with far less memory than decompressing its streams would take (about 2 MiB)."""
    count = 1 << 16
    pair = [count, 4 * count]  # an integer stream pair: symbols, extra bits
    # rows per sequence, entries per row, ids per class (32 values), dictionary, key codes, two float planes,
    # no counts, groups per row, first levels, steps, size overflows, drop overflows
    lengths = [*pair, *pair, 32, 128, *pair, *pair, 4 * count, 4 * count, 0, 0, *pair, *pair, count, *pair, *pair]
    frames = [zstandard.ZstdCompressor().compress(b"\0" * size) if size else b"" for size in lengths]
    head = _HEADER.pack(b"DDWL", 1, 2, 0, len(lengths), count, count, count, count, 100, 0)
    directory = b"".join(struct.pack("<BII", 1 if size else 0, size, len(frame))
                         for size, frame in zip(lengths, frames, strict=True))  # fmt: skip
    payload = _reseal(head + directory + b"".join(frames) + b"\0\0\0\0")
    assert len(payload) < 4096
    tracemalloc.start()
    try:
        with pytest.raises(WireFormatError, match="stream 1 declares"):
            wire.decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"decode allocated {peak} bytes"


def test_unsupported_versions_and_non_bytes_are_named_in_the_error():
    payload = bytearray(PAYLOADS["lossy"])
    payload[4] = 2
    with pytest.raises(WireFormatError, match="version 2"):
        wire.decode(_reseal(payload))
    with pytest.raises(WireFormatError, match="bytes"):
        wire.decode("DDWL")  # type: ignore[arg-type]
    assert issubclass(WireFormatError, ValueError)


@pytest.mark.slow
def test_hostile_payloads_never_index_out_of_bounds_in_the_compiled_decoder(tmp_path, codec_path):
    """numba does not check array bounds unless told to: an index a hostile payload could steer past an
    array would read or write memory silently. This module's hostile-payload tests run again in a process
    with NUMBA_BOUNDSCHECK=1 (a fresh cache: the loops compiled with the checks), where such an index raises
    IndexError, which those tests count as a failure."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if codec_path != "numba":
        pytest.skip("a check of the compiled loops")
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path), "DUALDISTILL_WIRE_KERNELS": "numba"}
    names = ["truncated", "bit_flips", "random_bytes", "tampered", "huge_declared", "zstd_frame"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", __file__, "-k",
         f"({' or '.join(names)}) and numba"],  # fmt: skip
        env=env, capture_output=True, text=True, timeout=1200, cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " 0 passed" not in run.stdout


@pytest.mark.parametrize("name", ["lossy", "lossless"])
def test_a_dictionary_id_repeated_in_another_count_class_is_refused(name):
    """Ids are increasing within a count class by construction, so only another class can repeat one: the
    first id of one class set to the first of another, the payload otherwise intact and resealed."""
    from dualdistill.protocol.wire import codec, container, dictionary

    header, streams = container.unpack(PAYLOADS[name], max_entries=_LIMIT)
    raw = [bytes(streams._read(i)) for i in range(len(streams._directory))]
    sizes = streams.get_uints(container.Stream.IDS_PER_CLASS, dictionary.NUM_CLASSES).astype(np.int64)
    gaps = streams.get_uints(container.Stream.DICTIONARY_GAPS, header.n_dict).astype(np.int64)
    key_to_id, _ = codec._dictionary(header, streams)
    firsts = np.r_[0, np.cumsum(sizes)[:-1]][sizes > 0]  # the key of each non-empty class's first id
    assert len(firsts) >= 2, "the payload needs ids in two count classes"
    gaps[firsts[1]] = key_to_id[firsts[0]]  # a class's first gap is its first id
    raw[container.Stream.DICTIONARY_GAPS : container.Stream.DICTIONARY_GAPS + 2] = container.uint_streams(gaps)
    with pytest.raises(WireFormatError, match="repeated"):
        wire.decode(container.pack(header, raw))


@given(st.lists(st.integers(0, 1 << 24), max_size=300), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_the_dictionary_distinct_check_agrees_with_a_set(values, repeats):
    """Both of its ways (a table marked at every value, or a sort): dense and sparse values, repeats added."""
    from dualdistill.protocol.wire.codec import _distinct

    values = values + values[:repeats]
    for array in (np.array(values, dtype=np.int64), np.array(values, dtype=np.int64) % 97):
        assert _distinct(array) == (len(set(array.tolist())) == len(array))
