"""Where the server's CPU goes per returned position: its stages timed alone, and a cProfile of them.

Used by `service_overhead.py` (part "profile"). In this process, on the served model's own code (no
transport): B sequences of T tokens, start s, top_k k; per stage the median CPU time (time.process_time)
over repeats, divided by the returned positions B * (T - s):

    forward          the model's forward alone (what the in-process anchor also pays)
    compute_logits   forward + post-processing (models/distributions.py: log-softmax, top-k, tail)
    wire.encode      the binary ("binary", lossy) payload of the results
    JSON body        http/encode.py's body of the results
    gRPC JSON        grpc/convert.py's structured response, serialized

then the functions with the most own time (cProfile tottime) over `reps` passes of compute_logits +
wire.encode + JSON body.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from pathlib import Path

import numpy as np


def _median_cpu(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        begin = time.process_time()
        fn()
        times.append(time.process_time() - begin)
    return float(np.median(times))


def profile_stages(directory: Path, *, batch: int, seq_len: int, start: int, top_k: int, reps: int, top: int = 12) -> dict:
    import torch

    from dualdistill.protocol import wire
    from dualdistill.protocol.params import LogitsParams
    from dualdistill_server.core import LogitsResult
    from dualdistill_server.grpc.convert import logits_response
    from dualdistill_server.http.encode import logits_json
    from dualdistill_server.models import LogitsTask, load_model

    model = load_model("bench", str(directory), max_top_k=max(256, top_k))
    vocab = model.info.vocab_size
    rng = np.random.default_rng(3)
    tasks = [LogitsTask(rng.integers(0, vocab, seq_len), start, LogitsParams(top_k=top_k)) for _ in range(batch)]
    ids = torch.from_numpy(np.stack([t.token_ids for t in tasks]))
    results = model.compute_logits(tasks)
    body = LogitsResult("bench", "0" * 16, "bench", results)
    positions = batch * (seq_len - start)

    def forward() -> None:
        with torch.inference_mode():
            model.model(input_ids=ids, use_cache=False, logits_to_keep=seq_len - start + 1)

    stages = {
        "forward": forward,
        "compute_logits": lambda: model.compute_logits(tasks),
        "wire.encode": lambda: wire.encode(results),
        "JSON body": lambda: logits_json(body),
        "gRPC JSON": lambda: logits_response(body, "json").SerializeToString(),
    }
    payload = wire.encode(results)
    stages["wire.decode (client)"] = lambda: wire.decode(payload)
    us = {name: _median_cpu(fn, reps) / positions * 1e6 for name, fn in stages.items()}
    paths = codec_paths({1: results[:1], batch: results}, reps=max(reps, 5))
    profiler = cProfile.Profile(time.process_time)  # CPU time, as the stages: wall time would count waits
    profiler.enable()
    for _ in range(reps):
        wire.encode(model.compute_logits(tasks))
        logits_json(body)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    ranked = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    entries = [
        {"function": _where(key), "calls_per_pass": value[1] / reps, "share": value[2] / total,
         "us_per_position": value[2] / reps / positions * 1e6}
        for key, value in ranked
    ]  # fmt: skip
    return {"batch": batch, "seq_len": seq_len, "start": start, "top_k": top_k, "reps": reps, "vocab": vocab,
            "us_per_position": us, "top": entries, "codec_paths": paths}  # fmt: skip


def codec_paths(responses: dict[int, list], reps: int) -> dict:
    """CPU ms per call of wire.encode / wire.decode for each {B: results}, with the compiled loops
    (kernels.py) and with numpy alone, the two alternating within each repeat: {path: {op: {B: [ms]}}}.
    Empty when numba is not installed."""
    from dualdistill.protocol import wire
    from dualdistill.protocol.wire import kernels

    if not kernels.enabled():
        return {}
    kernels.warm_up()
    saved, out = kernels.ENABLED, {"numba": {}, "numpy": {}}
    payloads = {b: wire.encode(r) for b, r in responses.items()}
    try:
        for _ in range(reps):
            for path in out:
                kernels.ENABLED = path == "numba"
                for b, results in responses.items():
                    calls = 20 if b == 1 else 2
                    for op, fn in (("encode", lambda r=results: wire.encode(r)),
                                   ("decode", lambda p=payloads[b]: wire.decode(p))):  # fmt: skip
                        fn()
                        begin = time.process_time()
                        for _ in range(calls):
                            fn()
                        out[path].setdefault(op, {}).setdefault(str(b), []).append(
                            (time.process_time() - begin) / calls * 1000
                        )
    finally:
        kernels.ENABLED = saved
    return out


def _where(key: tuple) -> str:
    filename, line, name = key
    if filename == "~":
        return name  # a built-in
    parts = Path(filename).parts
    for root in ("dualdistill_server", "dualdistill", "torch", "numpy", "transformers"):
        if root in parts:
            return f"{'/'.join(parts[parts.index(root):])}:{line} {name}"
    return f"{Path(filename).name}:{line} {name}"


def render(profile: dict) -> str:
    from bench.common import markdown_table

    p = profile
    lines = [
        f"\nWhere the server's CPU goes (in-process stages on the served model's code, B = {p['batch']}, T = "
        f"{p['seq_len']}, start = {p['start']}, top_k = {p['top_k']}, vocab {p['vocab']}; median CPU over "
        f"{p['reps']} repeats per returned position):\n",
        markdown_table(["stage", "CPU us/position"], [[k, f"{v:.1f}"] for k, v in p["us_per_position"].items()]),
        _render_paths(p),
        f"\nTop functions by own time (cProfile, {p['reps']} passes of compute_logits + wire.encode + JSON body):\n",
        markdown_table(
            ["function", "calls per pass", "share of own time", "us/position"],
            [[f"`{e['function']}`", f"{e['calls_per_pass']:.0f}", f"{e['share']:.1%}", f"{e['us_per_position']:.1f}"]
             for e in p["top"]],
        ),  # fmt: skip
    ]
    return "\n".join(lines)


def _render_paths(p: dict) -> str:
    from bench.common import markdown_table

    paths = p.get("codec_paths")
    if not paths:
        return "\n(numba not installed: no compiled-vs-numpy codec table)\n"
    rows = []
    for op in ("encode", "decode"):
        for b in paths["numba"][op]:
            fast, slow = np.median(paths["numba"][op][b]), np.median(paths["numpy"][op][b])
            per_position = int(b) * (p["seq_len"] - p["start"])
            rows.append([f"wire.{op}", b, f"{slow:.2f}", f"{fast:.2f}", f"{slow / fast:.2f}x",
                         f"{slow / per_position * 1000:.1f}", f"{fast / per_position * 1000:.1f}"])  # fmt: skip
    reps = len(paths["numba"]["encode"][next(iter(paths["numba"]["encode"]))])
    return (
        f"\nThe codec with numpy alone and with its compiled loops (dualdistill/protocol/wire/kernels.py; the same "
        f"bytes), on this model's results: CPU ms per call, median of {reps} alternating repeats:\n\n"
        + markdown_table(["call", "B", "numpy ms", "compiled ms", "speedup", "numpy us/position",
                          "compiled us/position"], rows)  # fmt: skip
    )
