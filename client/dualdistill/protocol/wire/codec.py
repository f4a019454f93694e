"""`encode` / `decode`: all sequences of one response in one self-describing payload.

Call tree:
    encode -> _flatten -> dictionary.build -> quantize_for_target (lossy)
           -> _encode_blocks -> (lossy.encode_levels | lossless.encode_entries) -> container.pack
    decode -> container.unpack -> _structure -> _dictionary -> _decode_blocks
           -> (lossy | lossless).decode_entries -> _split

Stream layout (index: content); integer streams are pairs (symbols, extra bits), intcode.py:
     0/1  rows per sequence            2/3  entries per row
     4/5  ids per count class (32)     6/7  dictionary ids in key order, as per-class gaps (dictionary.py)
     8/9  key codes (lossy: tie-group gaps; lossless: keys in the given order)
    10    token_logprobs, float32 byte planes       11  tail_logprobs, float32 byte planes
    12/13 counts ("sample" mode only; empty otherwise)
    14..  the variant's own streams, in the order of lossy.STREAMS / lossless.STREAMS (a "uint" stream
          is a pair, a "bytes" stream a single one)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.wire import container, dictionary, kernels, scratch
from dualdistill.protocol.wire import lossless as lossless_entries
from dualdistill.protocol.wire import lossy as lossy_entries
from dualdistill.protocol.wire.container import FLAG_COUNTS, LOSSLESS, LOSSY, Header, Stream, uint_streams
from dualdistill.protocol.wire.errors import WireFormatError
from dualdistill.protocol.wire.quantize import DEFAULT_TARGET_KL, dequantized, quantize_for_target
from dualdistill.protocol.wire.ragged import row_blocks, row_offsets, segment_cumsum, sort_within_rows

DEFAULT_MAX_ENTRIES = 1 << 27  # decode refuses payloads declaring more rows/entries (~1.6 GB decoded)
BLOCK_ENTRIES = 1 << 16  # row-local work runs on blocks of about this many entries (cache-sized)
_INT32_MAX = (1 << 31) - 1
_ID_TABLE = 1 << 22  # ids below this take the compiled dictionary (its per-thread table: 4 bytes per id, <= 16 MiB)
# Lossy top_logprobs above this are refused: log-probabilities are <= 0 (rounding may leave one a hair
# above), and far larger values are not log-probabilities (exp() of them overflows the quantizer's sums).
_MAX_LOSSY_LOGPROB = 64.0


def encode(
    results: Sequence[SequenceLogits], *, lossless: bool = False, target_kl: float = DEFAULT_TARGET_KL
) -> bytes:
    """Serialise one response's sequences. Lossless: bit-exact. Lossy: logprobs quantized (quantize.py)
    for a mean KL(exact || decoded) of about `target_kl` nats per row; ids, counts, token and tail
    logprobs stay exact and rows come back sorted by decoded logprob (ties by key)."""
    seq_rows, row_lengths, ids, logprobs, token, tail, counts = _flatten(results, lossless, in_scratch=True)
    key_to_id, key_classes, keys = _build_dictionary(ids)
    n_rows, n_entries, n_dict = len(row_lengths), len(ids), len(key_to_id)
    quant, level = (0, None) if lossless else quantize_for_target(logprobs, n_rows, target_kl)
    flags = FLAG_COUNTS if counts is not None else 0
    header = Header(LOSSLESS if lossless else LOSSY, flags, len(seq_rows), n_rows, n_entries, n_dict, quant)
    if not lossless and kernels.enabled():
        streams = _lossy_streams_compiled(seq_rows, row_lengths, keys, level, quant, key_to_id, key_classes, token,
                                          tail, counts)  # fmt: skip
        if streams is not None:
            return container.pack(header, streams)
    parts = _encode_blocks(row_lengths, keys, logprobs if lossless else level, quant, n_dict, counts)
    streams = [
        *uint_streams(seq_rows),
        *uint_streams(row_lengths),
        *(part for values in dictionary.to_streams(key_to_id, key_classes) for part in uint_streams(values)),
        *uint_streams(parts["key_codes"]),
        _planes(token),
        _planes(tail),
        *(uint_streams(parts["counts"]) if counts is not None else [b"", b""]),
    ]
    assert len(streams) == Stream.VARIANT, "the common streams must be laid out as container.Stream says"
    for name, kind in lossless_entries.STREAMS if lossless else lossy_entries.STREAMS:
        streams += uint_streams(parts[name]) if kind == "uint" else [b"".join(parts[name])]
    return container.pack(header, streams)


def _build_dictionary(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dictionary.build(ids) (the same arrays), compiled where the kernels are on and the ids index a table
    of at most _ID_TABLE ids: numpy's dense path takes a bincount, a nonzero scan and a lookup table as
    long as the largest id on every call (0.2-0.8 ms for one sequence of a 50k-130k vocabulary), the
    compiled one only the entries and the distinct ids (kernels._dictionary_count / _keys), with a
    per-thread table that each call leaves zeroed."""
    top = int(ids.max()) if ids.size else -1
    if not (kernels.enabled() and 0 <= top < _ID_TABLE):
        return dictionary.build(ids)
    distinct = scratch.array("dictionary.distinct", min(len(ids), top + 1) + 1, np.int64)
    table = scratch.zeroed("dictionary.table", top + 1, np.uint32)
    try:
        ordered = np.sort(distinct[: kernels.dictionary_count(ids, table, distinct)])
        key_to_id, key_classes = np.empty(len(ordered), dtype=np.int64), np.empty(len(ordered), dtype=np.int64)
        keys = np.empty(len(ids), dtype=np.int32)
        kernels.dictionary_keys(ids, ordered, table, distinct, key_to_id, key_classes, keys)
    except BaseException:  # interrupted between the two passes: the next call needs the table zeroed
        table[ids] = 0
        raise
    return key_to_id, key_classes, keys


def _lossy_streams_compiled(seq_rows, row_lengths, keys, level, quant, key_to_id, key_classes, token, tail, counts):
    """The lossy variant's streams in one compiled call after the row sort (kernels._encode_lossy: the same
    bytes as the steps below it), or None where it declines (a value the integer code cannot carry): then
    `encode`'s step-by-step path runs and raises its error."""
    n, rows = len(keys), len(row_lengths)
    # 5 bytes per integer (a symbol, <= 29 extra bits) in every integer stream, the planes and the steps; the
    # buffers are this thread's scratch (scratch.py: no page faults of fresh full-size arrays on every call),
    # and the streams (views of `out`) are compressed or copied by container.pack before the next encode
    out = scratch.array("lossy.out", 5 * (len(seq_rows) + 4 * rows + dictionary.NUM_CLASSES + len(key_to_id) + 4 * n)
                        + 8 * rows + n + 256, np.uint8)  # fmt: skip
    work = scratch.array("lossy.work", 6 * n + 2 * rows + len(key_to_id), np.int64)
    offsets = np.zeros(container.STREAM_COUNTS[LOSSY] + 1, dtype=np.int64)
    # numpy's row-wise sort of packed keys (vectorised) beats a compiled per-row sort; the rest is one call
    rank, sorted_keys, order = sort_within_rows(row_lengths, quant - 1 - level, quant, keys, max(len(key_to_id), 1),
                                                counts is not None)  # fmt: skip
    status = kernels.encode_lossy(
        seq_rows, row_lengths, rank, sorted_keys, order if order is not None else np.zeros(0, dtype=np.int64),
        quant, key_to_id, key_classes, _float_bytes(token), _float_bytes(tail),
        counts if counts is not None else np.zeros(0, dtype=np.int64), out, offsets, work,
    )  # fmt: skip
    if status == 1:
        raise ValueError(lossy_entries.REPEATED_IDS)
    if status:
        return None
    view = memoryview(out)
    return [view[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


def _float_bytes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype="<f4").view(np.uint8)


def _encode_blocks(row_lengths, keys, values, quant, n_dict, counts) -> dict[str, list]:
    """Row-local coding block by block (block-sized temporaries, no full-size ones): {stream: its parts
    in order}, for the key codes, the counts in the sent order and the variant's streams. `values`: the
    logprobs (lossless, quant == 0) or their levels at M = quant (lossy)."""
    parts = defaultdict(list)
    offsets = row_offsets(row_lengths)
    for r0, r1 in row_blocks(row_lengths, BLOCK_ENTRIES):
        e0, e1 = offsets[r0], offsets[r1]
        lengths = row_lengths[r0:r1]
        if quant == 0:
            block, codes, perm = lossless_entries.encode_entries(lengths, values[e0:e1]), keys[e0:e1], None
        else:
            perm, codes, block = lossy_entries.encode_levels(
                lengths, keys[e0:e1], values[e0:e1], quant, n_dict, with_order=counts is not None
            )
            block.update(lossy_entries.split_steps(block))
        parts["key_codes"].append(codes)
        if counts is not None:
            parts["counts"].append(counts[e0:e1] if perm is None else counts[e0:e1][perm])
        for name, part in block.items():
            parts[name].append(part)
    return parts


def decode(payload: bytes, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> list[SequenceLogits]:
    """Inverse of `encode`. Raises WireFormatError on any malformed payload, before allocating more than
    the header's (capped) counts allow."""
    header, streams = container.unpack(payload, max_entries=max_entries)
    if header.variant == LOSSY and kernels.enabled():
        return _decode_lossy_compiled(header, streams)
    seq_rows, row_lengths = _structure(header, streams)
    key_to_id, key_classes = _dictionary(header, streams)
    n, n_dict = header.n_entries, header.n_dict
    codes = streams.get_uints(Stream.KEY_CODES, n)
    if n and int(codes.max()) >= n_dict:
        raise WireFormatError(f"key code {int(codes.max())} out of range (< {n_dict})")
    token = _from_planes(streams.get(Stream.TOKEN_LOGPROBS, 4 * header.n_rows))
    tail = _from_planes(streams.get(Stream.TAIL_LOGPROBS, 4 * header.n_rows))
    counts = None
    if header.flags & FLAG_COUNTS:
        counts = streams.get_uints(Stream.COUNTS, n)
        if n and int(counts.max()) > _INT32_MAX:
            raise WireFormatError("count out of int32 range")
    else:
        streams.get(Stream.COUNTS, 0), streams.get(Stream.COUNTS + 1, 0)
    values = _variant_values(header, streams, row_lengths)
    keys, logprobs = _decode_blocks(row_lengths, codes, values, header.quant, n_dict)
    if not np.array_equal(dictionary.count_class(np.bincount(keys, minlength=n_dict)), key_classes):
        raise WireFormatError("dictionary count classes do not match the keys")
    return _split(seq_rows, row_lengths, key_to_id[keys], logprobs, token, tail, counts)


def _decode_lossy_compiled(header: Header, streams: container.Streams) -> list[SequenceLogits]:
    """`decode` of a lossy payload in one compiled call (kernels._decode_lossy: the same checks, messages and
    values; where a payload fails several checks, the one named may differ from the step-by-step path's, as
    every stream is read first): the per-call cost of a small payload is a few calls, not a few per stream."""
    s, r, n, u = header.n_sequences, header.n_rows, header.n_entries, header.n_dict
    with_counts = bool(header.flags & FLAG_COUNTS)
    m = n if with_counts else 0
    # Each stream's length, checked before anything is decompressed: exact where the header fixes it (a
    # symbol byte per integer, 4 bytes per float), bounded where it depends on other streams' contents
    # (first levels: one per non-empty row; steps and overflows: one per group after a row's first).
    extra = ("extra", 0)
    limits = [("exact", s), extra, ("exact", r), extra, ("exact", dictionary.NUM_CLASSES), extra, ("exact", u), extra,
              ("exact", n), extra, ("exact", 4 * r), ("exact", 4 * r), ("exact", m), extra, ("exact", r), extra,
              ("max", r), extra, ("max", n), ("max", n), extra, ("max", n), extra]  # fmt: skip
    buf, offsets = streams.joined(limits)
    seq_rows, row_lengths, ids, counts = (np.empty(size, dtype=np.int32) for size in (s, r, n, m))
    token, tail = np.empty(4 * r, dtype=np.uint8), np.empty(4 * r, dtype=np.uint8)
    # per-entry temporaries in this thread's scratch (scratch.py): [level | size | the kernel's own two]
    work = scratch.array("lossy.decode", 4 * n, np.int64)
    level, size = work[:n], work[n : 2 * n]
    key_to_id = np.empty(u, dtype=np.int64)
    status, a, b, c = kernels.decode_lossy(
        buf, offsets, header.quant, with_counts, seq_rows, row_lengths, key_to_id, ids, counts, token, tail, level,
        size, work[2 * n :],
    )  # fmt: skip
    if status:
        raise WireFormatError(kernels.DECODE_ERRORS[status].format(a=a, b=b, c=c))
    if not _distinct(key_to_id):
        raise WireFormatError(kernels.DECODE_ERRORS[8])
    logprobs = np.repeat(dequantized(level[:a], header.quant), size[:a])
    return _split(seq_rows, row_lengths, ids, logprobs, token.view("<f4"), tail.view("<f4"),
                  counts if with_counts else None)  # fmt: skip


def _variant_values(
    header: Header, streams: container.Streams, row_lengths: np.ndarray
) -> dict[str, np.ndarray]:
    """Read the variant's streams; each one's length follows from the header and the streams before it."""
    nonempty = int(np.count_nonzero(row_lengths))
    if header.variant == LOSSLESS:
        at = lossless_entries.OFFSETS
        return {
            "first_values": streams.get_uints(at["first_values"], nonempty),
            "value_drops": streams.get_uints(at["value_drops"], header.n_entries - nonempty),
        }
    at = lossy_entries.OFFSETS
    groups = streams.get_uints(at["groups_per_row"], header.n_rows).astype(np.int64)
    lossy_entries.check_groups(row_lengths, groups)
    inner = int(groups.sum()) - nonempty  # groups that are not a row's first (or not its last)
    first_levels = streams.get_uints(at["first_levels"], nonempty)
    steps, n_size_overflow, n_drop_overflow = lossy_entries.overflow_counts(streams.get(at["group_steps"], inner))
    sizes, drops = lossy_entries.join_steps(
        steps,
        streams.get_uints(at["size_overflow"], n_size_overflow),
        streams.get_uints(at["drop_overflow"], n_drop_overflow),
    )
    return {
        "groups_per_row": groups,
        "group_sizes": sizes,
        "first_levels": first_levels,
        "level_drops": drops,
    }


def _decode_blocks(row_lengths, codes, values, quant, n_dict) -> tuple[np.ndarray, np.ndarray]:
    """Per row block: (keys (N,) int64, logprobs (N,) float32); quant == 0 means lossless."""
    keys = np.empty(len(codes), dtype=np.int64)
    logprobs = np.empty(len(codes), dtype=np.float32)
    entry_at = row_offsets(row_lengths)
    first_at = row_offsets(row_lengths > 0)  # a row's index among the non-empty rows
    group_at = row_offsets(values["groups_per_row"]) if quant else entry_at
    for r0, r1 in row_blocks(row_lengths, BLOCK_ENTRIES):
        e0, e1, f0, f1, g0, g1 = (
            entry_at[r0],
            entry_at[r1],
            first_at[r0],
            first_at[r1],
            group_at[r0],
            group_at[r1],
        )
        # Which slice of each stream belongs to rows [r0, r1): per row, per non-empty row, or per
        # group/entry that is not a row's first.
        span = {"row": slice(r0, r1), "first": slice(f0, f1), "inner": slice(g0 - f0, g1 - f1)}
        lengths = row_lengths[r0:r1]
        if quant == 0:
            block = {
                "first_values": values["first_values"][span["first"]],
                "value_drops": values["value_drops"][span["inner"]],
            }
            keys[e0:e1] = codes[e0:e1]
            logprobs[e0:e1] = lossless_entries.decode_entries(lengths, block)
        else:
            block = {
                "groups_per_row": values["groups_per_row"][span["row"]],
                "group_sizes": values["group_sizes"][span["inner"]],
                "first_levels": values["first_levels"][span["first"]],
                "level_drops": values["level_drops"][span["inner"]],
            }
            keys[e0:e1], logprobs[e0:e1] = lossy_entries.decode_entries(
                lengths, codes[e0:e1], block, quant, n_dict
            )
    return keys, logprobs


def _flatten(results: Sequence[SequenceLogits], lossless: bool, in_scratch: bool = False):
    """Concatenate sequences; validate what the format cannot carry. `in_scratch`: the per-entry ids and
    logprobs are written into this thread's scratch buffers (scratch.py), valid until the next call."""
    results = list(results)
    for i, r in enumerate(results):
        if not isinstance(r, SequenceLogits):
            raise TypeError(f"results[{i}] is {type(r).__name__}, expected SequenceLogits")
    with_counts = [r.counts is not None for r in results]
    if any(with_counts) and not all(with_counts):
        raise ValueError(
            "all sequences of one response must be in the same mode (counts present in all or none)"
        )
    seq_rows = np.array([r.num_rows for r in results], dtype=np.int64)
    row_lengths = _concat(results, "row_lengths", np.int64)
    ids = _concat(results, "top_ids", np.int64, "flat.ids" if in_scratch else None)
    logprobs = _concat(results, "top_logprobs", np.float32, "flat.logprobs" if in_scratch else None)
    token, tail = (
        _concat(results, "token_logprobs", np.float32),
        _concat(results, "tail_logprobs", np.float32),
    )
    counts = _concat(results, "counts", np.int64) if results and all(with_counts) else None
    if (
        len(row_lengths) != int(seq_rows.sum())
        or len(ids) != int(row_lengths.sum())
        or len(logprobs) != len(ids)
    ):
        raise ValueError("inconsistent SequenceLogits arrays (row_lengths, top_ids, top_logprobs)")
    if len(token) != len(row_lengths) or len(tail) != len(row_lengths):
        raise ValueError("inconsistent SequenceLogits arrays (token/tail logprobs need one value per row)")
    if counts is not None and len(counts) != len(ids):
        raise ValueError("inconsistent SequenceLogits arrays (counts need one value per entry)")
    if len(ids) > 0xFFFFFFFF or len(row_lengths) > 0xFFFFFFFF:
        raise ValueError("too many entries for one payload (max 2**32 - 1); split the response")
    for name, arr in (("row_lengths", row_lengths), ("top_ids", ids), ("counts", counts)):
        if arr is not None and arr.size and int(arr.min()) < 0:
            raise ValueError(f"{name} must be non-negative")
    if not lossless and logprobs.size and not float(logprobs.max()) <= _MAX_LOSSY_LOGPROB:  # NaN fails too
        raise ValueError(
            f"top_logprobs contain NaN, +inf or values above {_MAX_LOSSY_LOGPROB:g}; the lossy variant cannot "
            "quantize them (log-probabilities are <= 0; use lossless for arbitrary floats)"
        )
    return seq_rows, row_lengths, ids, logprobs, token, tail, counts


def _concat(results: list[SequenceLogits], name: str, dtype, scratch_name: str | None = None) -> np.ndarray:
    """One array of all sequences' `name`, cast while it is copied (one pass); into a scratch buffer if
    `scratch_name` is given."""
    parts = [getattr(r, name) for r in results]  # 1-D arrays as SequenceLogits makes them
    if not all(type(p) is np.ndarray and p.ndim == 1 for p in parts):  # set to something else since
        parts = [np.ravel(p) for p in parts]
    if not parts:
        return np.zeros(0, dtype=dtype)
    if scratch_name is None:
        return np.concatenate(parts, dtype=dtype, casting="unsafe")
    out = scratch.array(scratch_name, sum(len(p) for p in parts), dtype)
    return np.concatenate(parts, out=out, casting="unsafe")


def _structure(header: Header, streams: container.Streams) -> tuple[np.ndarray, np.ndarray]:
    seq_rows = streams.get_uints(Stream.ROWS_PER_SEQUENCE, header.n_sequences).astype(np.int64)
    if int(seq_rows.sum()) != header.n_rows:
        raise WireFormatError("rows per sequence do not add up to the header's row count")
    row_lengths = streams.get_uints(Stream.ENTRIES_PER_ROW, header.n_rows)
    if header.n_rows and int(row_lengths.max()) > _INT32_MAX:
        raise WireFormatError("row length out of int32 range")
    row_lengths = row_lengths.astype(np.int64)
    if int(row_lengths.sum()) != header.n_entries:
        raise WireFormatError("row lengths do not add up to the header's entry count")
    return seq_rows, row_lengths


def _dictionary(header: Header, streams: container.Streams) -> tuple[np.ndarray, np.ndarray]:
    """-> (key_to_id (U,) int64, count class of each key (U,) int64)."""
    n_dict = header.n_dict
    sizes = streams.get_uints(Stream.IDS_PER_CLASS, dictionary.NUM_CLASSES).astype(np.int64)  # values < 2**32: no overflow
    if int(sizes.sum()) != n_dict:
        raise WireFormatError("ids per count class do not add up to the dictionary size")
    gaps = streams.get_uints(Stream.DICTIONARY_GAPS, n_dict).astype(np.int64)
    if n_dict == 0:
        return gaps, gaps
    starts = np.zeros(n_dict, dtype=bool)
    starts[np.r_[0, np.cumsum(sizes)[:-1]][sizes > 0]] = True
    key_to_id = segment_cumsum(np.where(starts, gaps, gaps + 1), starts)  # <= 2**27 * 2**32: no overflow
    if int(key_to_id.max()) > _INT32_MAX or not _distinct(key_to_id):
        raise WireFormatError("dictionary ids out of int32 range or repeated")
    classes = np.repeat(np.arange(dictionary.NUM_CLASSES - 1, -1, -1), sizes)
    return key_to_id, classes


_SEEN_TABLE_RATIO = 64  # `_distinct` marks a table when the largest value is below this many times the count


def _distinct(values: np.ndarray) -> bool:
    """No value repeats, for non-negative integers. A payload's dictionary ids are a vocabulary's: one
    table as long as the largest, marked at every id, holds as many marks as ids exactly when none
    repeats, in less time than their sort (a one-sequence answer of a 49,152-id vocabulary decodes 1.38x
    faster, bench/codec_ab.py). Values far sparser than their largest (a table that would be mostly empty)
    are sorted and compared instead."""
    if values.size < 2:
        return True
    top = int(values.max())
    if int(values.min()) >= 0 and top < min(_ID_TABLE, _SEEN_TABLE_RATIO * values.size):
        seen = np.zeros(top + 1, dtype=bool)
        seen[values] = True
        return int(np.count_nonzero(seen)) == values.size
    ordered = np.sort(values)
    return not (ordered[1:] == ordered[:-1]).any()


def _split(seq_rows, row_lengths, ids, logprobs, token, tail, counts) -> list[SequenceLogits]:
    """One SequenceLogits per sequence (loop per sequence, not per row)."""
    rows_at = row_offsets(seq_rows)
    entries_at = row_offsets(row_lengths)[rows_at]
    out = []
    for s in range(len(seq_rows)):
        r0, r1, e0, e1 = rows_at[s], rows_at[s + 1], entries_at[s], entries_at[s + 1]
        out.append(
            SequenceLogits(
                row_lengths=row_lengths[r0:r1],
                top_ids=ids[e0:e1],
                top_logprobs=logprobs[e0:e1],
                token_logprobs=token[r0:r1],
                tail_logprobs=tail[r0:r1],
                counts=None if counts is None else counts[e0:e1],
            )
        )
    return out


def _planes(values: np.ndarray) -> bytes:
    """(R,) float32 -> 4R bytes: byte 0 (least significant) of every value, then byte 1, 2, 3."""
    return np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _from_planes(data: bytes) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(4, -1)
    return np.ascontiguousarray(planes.T).view("<f4").reshape(-1).astype(np.float32)
