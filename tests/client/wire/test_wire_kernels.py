"""The compiled loops (dualdistill.protocol.wire.kernels) against the numpy code they replace: the same
bytes out of the integer coder and the tie-group pass, the same values out of their inverses, the same
errors; the switch (DUALDISTILL_WIRE_KERNELS) and the warm-up. Whole payloads are compared by every other
test of this directory, which runs on both paths (conftest.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdistill.protocol import wire
from dualdistill.protocol.results import SequenceLogits
from dualdistill.protocol.wire import codec, container, dictionary, intcode, kernels, lossy, quantize, scratch
from dualdistill.protocol.wire.errors import WireFormatError
from tests.client.wire.synthetic import teacher_response

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="numba is not installed")


@pytest.fixture(autouse=True, scope="module")
def codec_path():
    """Overrides conftest.py's: these tests run both paths themselves (`_both`), once."""
    yield "both"

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def _both(fn, *args):
    """fn(*args) with the kernels on, then off: the two results (or the two exceptions' types and texts)."""
    out = []
    for enabled in (True, False):
        saved, kernels.ENABLED = kernels.enabled(), enabled
        try:
            out.append(fn(*args))
        except (ValueError, WireFormatError) as exc:
            out.append((type(exc), str(exc)))
        finally:
            kernels.ENABLED = saved
    return out


# a mix of direct symbols (< 16), every bit width up to 2**32 - 1, and runs long enough for every path
# of the numpy coder (Python integers <= 128 values, a bit matrix <= 256, chunks and field pairing beyond)
values = st.lists(
    st.one_of(st.integers(0, 15), st.integers(16, 2**12), st.integers(0, 2**32 - 1)), max_size=1500
)


@given(values)
@SETTINGS
def test_the_integer_coder_writes_the_same_bytes_and_reads_them_back(numbers):
    array = np.array(numbers, dtype=np.uint64)
    compiled, plain = _both(intcode.encode_uints, array)
    assert compiled == plain
    symbols, extra = compiled
    nbits = intcode.symbol_extra_bits(np.frombuffer(symbols, dtype=np.uint8))
    for decoded in _both(intcode.decode_uints, symbols, nbits, extra):
        assert decoded.dtype == np.uint64 and decoded.tolist() == numbers


def test_a_list_of_arrays_is_one_stream():
    parts = [np.arange(0, 300, dtype=np.int64), np.array([2**31, 5], dtype=np.int64), np.zeros(0, dtype=np.int64)]
    compiled, plain = _both(intcode.encode_uints, parts)
    assert compiled == plain == _both(intcode.encode_uints, np.concatenate(parts))[1]


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_values_outside_32_bits_are_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        intcode.encode_uints(np.array([7, bad, 3], dtype=np.int64))  # the kernels are on in this module


@st.composite
def level_rows(draw):
    """Rows of (key, level) entries, distinct keys per row; levels sorted descending or in any order."""
    levels = draw(st.sampled_from([1, 2, 9, 500, 1 << 20]))
    lengths = draw(st.lists(st.integers(0, 60), max_size=6))
    n_dict = draw(st.integers(max(lengths, default=0) or 1, 5000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = np.concatenate([rng.choice(n_dict, m, replace=False) for m in lengths] or [np.zeros(0, int)])
    level = rng.integers(0, levels, len(keys))
    if draw(st.booleans()):  # as top-k rows arrive: by level descending
        offsets = np.r_[0, np.cumsum(lengths)]
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            level[a:b] = np.sort(level[a:b])[::-1]
    return np.array(lengths, dtype=np.int64), keys.astype(np.int32), level.astype(np.int64), levels, n_dict  # as dictionary.build


def _plain(array):
    return array.tolist() if isinstance(array, np.ndarray) else array


@given(level_rows(), st.booleans())
@SETTINGS
def test_the_tie_groups_match_numpy_and_decode_back(rows, with_order):
    lengths, keys, level, levels, n_dict = rows
    compiled, plain = _both(lossy.encode_levels, lengths, keys, level, levels, n_dict, with_order)
    (perm_c, codes_c, values_c), (perm_p, codes_p, values_p) = compiled, plain
    assert _plain(perm_c) == _plain(perm_p) and codes_c.tolist() == codes_p.tolist()
    assert {k: v.tolist() for k, v in values_c.items()} == {k: v.tolist() for k, v in values_p.items()}
    steps = lossy.split_steps(values_c)
    sizes, drops = lossy.join_steps(np.frombuffer(steps["group_steps"], np.uint8), steps["size_overflow"],
                                    steps["drop_overflow"])  # fmt: skip
    decoded_values = {"groups_per_row": values_c["groups_per_row"], "group_sizes": sizes,
                      "first_levels": values_c["first_levels"], "level_drops": drops}  # fmt: skip
    keys_back, logprobs = lossy.decode_entries(lengths, codes_c.astype(np.uint64), decoded_values, levels, n_dict)
    sent = perm_c if perm_c is not None else lossy.encode_levels(lengths, keys, level, levels, n_dict, True)[0]
    assert keys_back.tolist() == keys[sent].tolist()
    assert logprobs.tobytes() == quantize.dequantize(level[sent], levels).tobytes()


def test_a_repeated_id_in_a_row_is_refused_on_both_paths():
    lengths, keys, level = np.array([3]), np.array([4, 4, 1]), np.array([2, 2, 0])
    compiled, plain = _both(lossy.encode_levels, lengths, keys, level, 3, 5, False)
    assert compiled == plain and compiled[0] is ValueError and "repeat an id" in compiled[1]


def _with_group_steps(payload: bytes, steps: bytes) -> bytes:
    """`payload` (lossy, no overflows) with its group-step stream replaced, directory and CRC made anew."""
    header, streams = container.unpack(payload, max_entries=1 << 20)
    raw = [streams.get(i, streams._directory[i][1]) for i in range(container.STREAM_COUNTS[header.variant])]
    raw[lossy.OFFSETS["group_steps"]] = steps
    return container.pack(header, raw)


@pytest.mark.parametrize(
    "step, message",
    [(8 * 5, "tie-group sizes exceed"), (8 * 1 + 6, "level drops exceed")],
)
def test_corrupt_groups_are_refused_with_the_same_error(step, message):
    """One row of 4 entries in 2 tie groups of 2 (levels 1 and 0: step 8 * (2 - 1) + (1 - 0 - 1) = 8); a step
    that says a first group of 6 entries, or a drop of 7 levels, is refused by the whole-payload decoder
    and by numpy's with the same error."""
    row = SequenceLogits(row_lengths=[4], top_ids=[3, 5, 7, 9], top_logprobs=[-0.01, -0.01, -9, -9],
                         token_logprobs=[-1], tail_logprobs=[-2])  # fmt: skip
    payload = wire.encode([row], target_kl=1.0)  # a coarse quantizer, M = 2: levels 1 and 0
    header, _ = container.unpack(payload, max_entries=1 << 20)
    assert header.quant == 2 and _with_group_steps(payload, bytes([8])) == payload
    compiled, plain = _both(wire.decode, _with_group_steps(payload, bytes([step])))
    assert compiled == plain == (WireFormatError, compiled[1]) and message in compiled[1]


def test_a_numba_that_does_not_import_leaves_numpy_on_auto_and_fails_loudly_when_required(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.setenv(kernels.ENV, "auto")
    assert kernels._enabled() is False
    monkeypatch.setenv(kernels.ENV, "numba")
    with pytest.raises(ImportError, match="DUALDISTILL_WIRE_KERNELS=numba but numba does not import"):
        kernels._enabled()


def test_the_switch_reads_the_environment(monkeypatch):
    for value, enabled in (("numpy", False), ("numba", True), ("auto", True), ("", True)):
        monkeypatch.setenv(kernels.ENV, value)
        assert kernels._enabled() is enabled
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="DUALDISTILL_WIRE_KERNELS must be one of auto, numba, numpy"):
        kernels._enabled()


def test_warm_up_compiles_every_loop_for_the_types_the_codec_passes():
    """After warm_up, encoding and decoding real payloads compiles nothing more (no request waits)."""
    assert kernels.warm_up() > 0
    names = ("encode_fields", "decode_fields", "tie_groups", "level_totals", "decode_lossy", "encode_lossy",
             "dictionary_count", "dictionary_keys")  # fmt: skip
    loops = [getattr(kernels, name) for name in names]
    compiled = [len(loop.compiled.signatures) for loop in loops]
    for results in (teacher_response(sequences=2, rows=40, seed=3), _sampled()):
        for lossless in (False, True):
            wire.decode(wire.encode(results, lossless=lossless))
    assert [len(loop.compiled.signatures) for loop in loops] == compiled


def _sampled() -> list[SequenceLogits]:
    """A "sample"-mode response: ragged rows with counts."""
    rng = np.random.default_rng(0)
    lengths = np.array([3, 0, 5])
    ids = np.concatenate([rng.choice(49152, m, replace=False) for m in lengths])
    logprobs = np.sort(-rng.exponential(3.0, len(ids))).astype(np.float32)
    return [SequenceLogits(row_lengths=lengths, top_ids=ids, top_logprobs=logprobs, token_logprobs=-np.ones(3),
                           tail_logprobs=-np.ones(3), counts=rng.integers(1, 9, len(ids)))]  # fmt: skip


def test_a_loop_numba_cannot_cache_is_compiled_in_memory(monkeypatch, caplog):
    """Where numba finds no writable cache directory it refuses `cache=True` with a RuntimeError; the loop
    is then compiled without its disk cache (and the codec still works)."""
    import numba

    real = numba.njit

    def njit(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    for name in kernels._LOOPS:  # back to the plain functions, as before the first compilation
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, getattr(fn, "py_func", fn))
    loop = kernels._Lazy("_encode")
    symbols, extra, done = loop(np.array([3, 300], dtype=np.int64))
    want_symbols, want_extra, _ = kernels.encode_fields(np.array([3, 300], dtype=np.int64))
    assert done == 2 and symbols.tobytes() == want_symbols.tobytes() and extra.tobytes() == want_extra.tobytes()
    assert "compiling it in memory" in caplog.text


def test_an_empty_list_of_arrays_is_an_empty_stream():
    compiled, plain = _both(intcode.encode_uints, [])
    assert compiled == plain == (b"", b"")


logprob_lists = st.lists(
    st.one_of(st.floats(-30.0, 0.0, width=32), st.just(float("-inf")), st.floats(-800.0, -600.0, width=32)),
    min_size=1, max_size=600,
)  # fmt: skip


def _totals(logprobs: np.ndarray, levels: int) -> tuple[bytes, bytes, bytes]:
    level, mass, count = quantize._Entries(logprobs, "test").level_totals(levels)
    return level.tobytes(), mass.tobytes(), count.tobytes()


@given(logprob_lists, st.integers(1, 5000))
@SETTINGS
def test_the_quantizer_level_totals_are_numpys_bit_for_bit(numbers, levels):
    """The KL search's levels, per-level mass (float64 sums, same order) and counts, compiled vs numpy."""
    compiled, plain = _both(_totals, np.array(numbers, dtype=np.float32), levels)
    assert compiled == plain


def test_an_unsure_level_is_reported_and_left_to_numpy():
    """A root whose scaled value is within the slack of a level boundary: the loop says so (the caller
    then takes numpy's path, which settles it with the exact exp); so does a root that is not a number."""
    levels, slack = 64, quantize._ROOT_SLACK
    root = np.array([0.3, 17 / 64, 0.1])  # 17 / 64 * 64 is a level boundary exactly
    out = np.empty(3, dtype=np.int64)
    _, _, unsure = kernels.level_totals(root, root * root, out, levels, levels * (1 - slack), levels * (1 + slack))
    assert unsure == 1
    root[2] = np.nan
    assert kernels.level_totals(root, root * root, out, levels, levels * (1 - slack), levels * (1 + slack))[2] > 0
    # through the quantizer: an entry put on a boundary gives numpy's answer on both paths
    entries = quantize._Entries(np.log(np.array([0.25, 0.04, 0.5], dtype=np.float32)), "test")
    entries.approx_root[1] = 13 / 64
    compiled, plain = _both(lambda: tuple(a.copy() for a in entries.level_totals(levels)))
    assert all(np.array_equal(a, b) for a, b in zip(compiled, plain, strict=True))


@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=300), st.sampled_from([1, 2, 7, 494, 4097, 16384, 70000]))
@SETTINGS
def test_the_decoders_level_table_gives_dequantize_bit_for_bit(numbers, levels):
    """`dequantized` (a cached table per M, or the plain call above the cached sizes) equals `dequantize`
    on every level, whatever the array's length and order (numpy's vectorised log on the table's run
    against the same log on the decoded levels)."""
    level = np.array(numbers, dtype=np.int64) % levels
    assert quantize.dequantized(level, levels).tobytes() == quantize.dequantize(level, levels).tobytes()
    assert quantize.dequantized(level[::-1], levels).tobytes() == quantize.dequantize(level[::-1], levels).tobytes()


# ids from a few reused ones to all distinct, over id ranges from a tiny vocabulary to past the largest ones
id_lists = st.integers(1, 3000).flatmap(
    lambda top: st.lists(st.integers(0, top), min_size=1, max_size=2000)
) | st.lists(st.integers(0, (1 << 22) - 1), min_size=1, max_size=300)


@given(id_lists)
@SETTINGS
def test_the_compiled_dictionary_is_numpys_and_leaves_its_table_zeroed(numbers):
    """codec's compiled dictionary (kernels._dictionary_count / _keys) gives dictionary.build's key_to_id,
    classes and keys, and hands back its per-thread table all zero."""
    ids = np.array(numbers, dtype=np.int64)
    compiled = codec._build_dictionary(ids)
    plain = dictionary.build(ids)
    assert all(np.array_equal(a, b) for a, b in zip(compiled, plain, strict=True))
    assert not scratch.zeroed("dictionary.table", 0, np.uint32).any()


def test_the_compiled_dictionary_takes_every_id_of_a_range_and_counts_past_a_class():
    """Every id of [0, top] used (as many distinct ids as the table holds) and counts of 2**k and 2**k - 1
    (class edges), against dictionary.build; then a vocabulary too large for the table goes to numpy's
    path."""
    ids = np.concatenate([np.arange(50), np.full(255, 7), np.full(256, 3), np.full(1023, 49)]).astype(np.int64)
    for order in (ids, ids[::-1].copy()):
        compiled, plain = codec._build_dictionary(order), dictionary.build(order)
        assert all(np.array_equal(a, b) for a, b in zip(compiled, plain, strict=True))
    wide = np.array([5, codec._ID_TABLE + 3, 5], dtype=np.int64)
    compiled, plain = codec._build_dictionary(wide), dictionary.build(wide)
    assert all(np.array_equal(a, b) for a, b in zip(compiled, plain, strict=True))


def test_an_interrupted_compiled_dictionary_leaves_its_table_zeroed(monkeypatch):
    """An exception between the two passes (here from the sort) resets the per-thread table, so the next
    call still gets dictionary.build's answer."""
    ids = np.array([9, 4, 9, 9, 2], dtype=np.int64)

    def interrupted(values):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec.np, "sort", interrupted)
    with pytest.raises(KeyboardInterrupt):
        codec._build_dictionary(ids)
    monkeypatch.undo()
    assert not scratch.zeroed("dictionary.table", 0, np.uint32).any()
    compiled, plain = codec._build_dictionary(ids), dictionary.build(ids)
    assert all(np.array_equal(a, b) for a, b in zip(compiled, plain, strict=True))
