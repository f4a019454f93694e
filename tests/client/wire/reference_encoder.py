"""A frozen copy of the wire encoder as it was before its speed-up (the numpy code of protocol/wire at the
time), kept in the test tree only: test_wire_encoder_bytes.py checks that the library's encoder writes
exactly the bytes this one writes, so decoders in the field see no change.

Do not "fix" or speed up this file: its value is that it does not change. It imports nothing from
dualdistill.protocol.wire; shapes and stream layout are described in docs/wire-format.md.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import zstandard

from dualdistill.protocol.results import SequenceLogits

_HEADER = struct.Struct("<4sBBBBIIIIII")
_ENTRY = struct.Struct("<BII")
_LOSSLESS, _LOSSY, _FLAG_COUNTS = 1, 2, 0x01
_MAX_LEVELS = 1 << 20
_BLOCK_ENTRIES = 1 << 14
_CHUNK = 1 << 14
_CAP = 7
_SIGN = np.uint32(0x80000000)
_ONE, _63 = np.uint64(1), np.uint64(63)


def encode(results: list[SequenceLogits], *, lossless: bool = False, target_kl: float = 9e-5) -> bytes:
    seq_rows, row_lengths, ids, logprobs, token, tail, counts = _flatten(results, lossless)
    key_to_id, key_classes, keys = _build_dictionary(ids)
    n_rows, n_entries, n_dict = len(row_lengths), len(ids), len(key_to_id)
    quant = 0 if lossless else _choose_levels(logprobs, n_rows, target_kl)
    codes, values, perm = _encode_blocks(row_lengths, keys, logprobs, quant, n_dict)
    if counts is not None and perm is not None:
        counts = counts[perm]
    sizes, gaps = _dictionary_streams(key_to_id, key_classes)
    streams = [*_uints(seq_rows), *_uints(row_lengths), *_uints(sizes), *_uints(gaps), *_uints(codes)]
    streams += [_planes(token), _planes(tail), *(_uints(counts) if counts is not None else [b"", b""])]
    if lossless:
        streams += [*_uints(values["first_values"]), *_uints(values["value_drops"])]
    else:
        a, b = values["group_sizes"], values["level_drops"]
        steps = (np.minimum(a, _CAP) * 8 + np.minimum(b, _CAP)).astype(np.uint8).tobytes()
        streams += [*_uints(values["groups_per_row"]), *_uints(values["first_levels"]), steps]
        streams += [*_uints(a[a >= _CAP] - _CAP), *_uints(b[b >= _CAP] - _CAP)]
    flags = _FLAG_COUNTS if counts is not None else 0
    head = (_LOSSLESS if lossless else _LOSSY, flags, len(seq_rows), n_rows, n_entries, n_dict, quant)
    return _pack(head, streams)


def _flatten(results, lossless):
    results = list(results)
    with_counts = [r.counts is not None for r in results]
    seq_rows = np.array([r.num_rows for r in results], dtype=np.int64)
    row_lengths, ids = _concat(results, "row_lengths", np.int64), _concat(results, "top_ids", np.int64)
    logprobs = _concat(results, "top_logprobs", np.float32)
    token, tail = _concat(results, "token_logprobs", np.float32), _concat(results, "tail_logprobs", np.float32)
    counts = _concat(results, "counts", np.int64) if results and all(with_counts) else None
    return seq_rows, row_lengths, ids, logprobs, token, tail, counts


def _concat(results, name, dtype):
    parts = [np.asarray(getattr(r, name), dtype=dtype).reshape(-1) for r in results]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --- id dictionary -------------------------------------------------------------------------------


def _count_class(counts):
    c = np.asarray(counts).astype(np.float64)
    return (c.view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1023


def _build_dictionary(ids):
    ids = ids.astype(np.int64, copy=False)
    if ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    top = int(ids.max())
    if top < max(1 << 22, 4 * ids.size):
        all_counts = np.bincount(ids, minlength=top + 1)
        distinct = np.flatnonzero(all_counts)
        counts, inverse = all_counts[distinct], None
    else:
        distinct, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    classes = _count_class(counts)
    order = np.lexsort((distinct, -classes))
    key_of = np.empty(len(distinct), dtype=np.int64)
    key_of[order] = np.arange(len(distinct))
    if inverse is None:
        table = np.zeros(top + 1, dtype=np.int64)
        table[distinct] = key_of
        keys = table[ids]
    else:
        keys = key_of[inverse.reshape(-1)]
    return distinct[order], classes[order], keys


def _dictionary_streams(key_to_id, classes):
    sizes = np.bincount(classes, minlength=32)[::-1]
    gaps = np.diff(key_to_id, prepend=-1) - 1
    starts = np.r_[0, np.cumsum(sizes)[:-1]][sizes > 0]
    gaps[starts] = key_to_id[starts]
    return sizes, gaps


# --- quantizer -----------------------------------------------------------------------------------


def _quantize(logprobs, levels):
    root = np.exp(logprobs.astype(np.float64) * 0.5)
    return np.minimum(np.floor(root * levels), levels - 1).astype(np.int64)


def _dequantize(level, levels):
    return (2.0 * (np.log(level.astype(np.float64) + 0.5) - math.log(levels))).astype(np.float32)


def _kl_of(logprobs, n_rows):
    log_p = logprobs.astype(np.float64)
    p = np.exp(log_p)
    root = np.exp(log_p * 0.5)
    constant = float((p * np.where(p > 0, log_p, 0.0)).sum() - p.sum())

    def kl(levels):
        level = (root * levels).astype(np.int64)
        np.minimum(level, levels - 1, out=level)
        log_q = _dequantize(np.arange(levels), levels).astype(np.float64)
        mass = np.bincount(level, weights=p, minlength=levels)
        count = np.bincount(level, minlength=levels)
        return (constant - float(mass @ log_q) + float(count @ np.exp(log_q))) / max(n_rows, 1e-300)

    return kl


def _rescaled(levels, kl, target_kl):
    return int(min(max(math.ceil(levels * math.sqrt(max(kl, 1e-300) / target_kl)), 1), _MAX_LEVELS))


def _choose_levels(logprobs, n_rows, target_kl):
    n = len(logprobs)
    stride = max(1, n // (1 << 14))
    full_kl = _kl_of(logprobs, n_rows)
    sample_kl = (
        _kl_of(logprobs[::stride], n_rows * len(logprobs[::stride]) / max(n, 1)) if stride > 1 else full_kl
    )
    levels = int(min(max(math.ceil(math.sqrt(max(n / max(n_rows, 1), 1.0) / (6.0 * target_kl))), 1), _MAX_LEVELS))
    for _ in range(2):
        levels = _rescaled(levels, sample_kl(levels), target_kl)
    for _ in range(80):
        kl = full_kl(levels)
        if kl <= target_kl or levels == _MAX_LEVELS:
            break
        levels = min(_MAX_LEVELS, max(_rescaled(levels, kl, target_kl), math.ceil(levels * 1.01)))
    return levels


# --- row-local entry coding ----------------------------------------------------------------------


def _row_offsets(row_lengths):
    out = np.zeros(len(row_lengths) + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=out[1:])
    return out


def _row_starts(row_lengths, n_entries):
    mask = np.zeros(n_entries, dtype=bool)
    mask[_row_offsets(row_lengths)[:-1][row_lengths > 0]] = True
    return mask


def _within_row_order(row_lengths, primary, secondary, secondary_span):
    n, rows = len(primary), len(row_lengths)
    within = primary * secondary_span + secondary
    if rows and n == rows * int(row_lengths[0]) and np.all(row_lengths == row_lengths[0]):
        k = int(row_lengths[0])
        order = np.argsort(within.reshape(rows, k), axis=1) if k else np.zeros((rows, 0), dtype=np.int64)
        return (order + (np.arange(rows, dtype=np.int64) * k)[:, None]).reshape(-1)
    span = int(within.max(initial=0)) + 1
    row = np.repeat(np.arange(rows, dtype=np.int64), row_lengths)
    if rows * span < (1 << 62):
        return np.argsort(row * span + within)
    return np.lexsort((within, row))


def _row_blocks(row_lengths, block_entries):
    offsets = _row_offsets(row_lengths)
    targets = np.arange(block_entries, offsets[-1], block_entries)
    cuts = dict.fromkeys(np.searchsorted(offsets, targets, side="right").tolist())
    bounds = [0, *[c for c in cuts if 0 < c < len(row_lengths)], len(row_lengths)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _lossless_entries(row_lengths, logprobs):
    bits = np.ascontiguousarray(logprobs, dtype=np.float32).view(np.uint32)
    u = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    starts = _row_starts(row_lengths, len(u))
    return {"first_values": u[starts], "value_drops": (u[:-1] - u[1:])[~starts[1:]]}


def _lossy_entries(row_lengths, keys, logprobs, levels, n_dict):
    n = len(keys)
    level = _quantize(logprobs, levels)
    perm = _within_row_order(row_lengths, levels - 1 - level, keys, max(n_dict, 1))
    level, keys = level[perm], keys[perm]
    in_group = _row_starts(row_lengths, n)
    in_group[1:] |= level[1:] != level[:-1]
    group_at = np.flatnonzero(in_group)
    group_row = np.searchsorted(_row_offsets(row_lengths), group_at, side="right") - 1
    first_of_row = np.r_[True, group_row[1:] != group_row[:-1]] if len(group_at) else np.zeros(0, bool)
    last_of_row = np.r_[first_of_row[1:], True] if len(group_at) else first_of_row
    group_level = level[group_at]
    codes = keys.copy()
    codes[1:] = np.where(in_group[1:], keys[1:], keys[1:] - keys[:-1] - 1)
    values = {
        "groups_per_row": np.bincount(group_row, minlength=len(row_lengths)),
        "group_sizes": (np.diff(np.r_[group_at, n]) - 1)[~last_of_row],
        "first_levels": group_level[first_of_row],
        "level_drops": (group_level[:-1] - group_level[1:] - 1)[~first_of_row[1:]],
    }
    return perm, codes, values


def _encode_blocks(row_lengths, keys, logprobs, quant, n_dict):
    codes, parts, perms = [], [], []
    offsets = _row_offsets(row_lengths)
    for r0, r1 in _row_blocks(row_lengths, _BLOCK_ENTRIES):
        e0, e1 = offsets[r0], offsets[r1]
        lengths = row_lengths[r0:r1]
        if quant == 0:
            parts.append(_lossless_entries(lengths, logprobs[e0:e1]))
            codes.append(keys[e0:e1])
        else:
            perm, code, values = _lossy_entries(lengths, keys[e0:e1], logprobs[e0:e1], quant, n_dict)
            parts.append(values)
            codes.append(code)
            perms.append(perm + e0)
    values = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return np.concatenate(codes), values, (np.concatenate(perms) if perms else None)


# --- integer streams and the container -----------------------------------------------------------


def _to_symbols(values):
    x = np.asarray(values).astype(np.uint64, copy=False)
    msb = (x.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1023
    big = x >= 16
    nbits = (msb - 2) * big
    lead = x >> nbits.astype(np.uint64)
    symbols = np.where(big, 4 * msb - 4 + lead.astype(np.int64), x.astype(np.int64)).astype(np.uint8)
    return symbols, x - (lead << nbits.astype(np.uint64)), nbits


def _place(words, values, nbits, start_bit):
    offset = np.cumsum(nbits, dtype=np.int64) - nbits + start_bit
    word, pos = offset >> 6, (offset & 63).astype(np.uint64)
    top = (values.astype(np.uint64) << (_63 - nbits.astype(np.uint64))) << _ONE
    head = top >> pos
    tail = (top << (_63 - pos)) << _ONE
    starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
    words[word[starts]] += np.add.reduceat(head, starts)
    words[word[starts] + 1] += np.add.reduceat(tail, starts)


def _uints(values):
    x = np.asarray(values).astype(np.uint64, copy=False)
    symbols = np.empty(len(x), dtype=np.uint8)
    parts = []
    for lo in range(0, len(x), _CHUNK):
        symbols[lo : lo + _CHUNK], extra, nbits = _to_symbols(x[lo : lo + _CHUNK])
        parts.append((extra, nbits, int(nbits.sum())))
    total = sum(bits for _, _, bits in parts)
    words = np.zeros(total // 64 + 2, dtype=np.uint64)
    start = 0
    for extra, nbits, bits in parts:
        if bits:
            _place(words, extra, nbits, start)
        start += bits
    return [symbols.tobytes(), words.astype(">u8").tobytes()[: (total + 7) // 8]]


def _planes(values):
    return np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _pack(head, streams):
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
    directory, bodies = [], []
    for raw in streams:
        packed = cctx.compress(raw) if raw else b""
        codec, body = (1, packed) if len(packed) < len(raw) else (0, raw)
        directory.append(_ENTRY.pack(codec, len(raw), len(body)))
        bodies.append(body)
    out = b"".join([_HEADER.pack(b"DDWL", 1, head[0], head[1], len(streams), *head[2:], 0), *directory, *bodies])
    return out + struct.pack("<I", zlib.crc32(out))
