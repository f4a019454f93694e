"""The service's own cost: server CPU per returned position, added latency per call, fairness under load.

Used by `service_overhead.py` (its second and third tables) on a cheap model, where the forward is small
and whatever the service adds decides the throughput a GPU forward would allow:

- cpu_per_position: the server's CPU time (its threads' scheduler time, `threads_cpu_seconds`) over
  `calls` calls of B sequences, minus the in-process anchor's CPU time for the same sequences (forward +
  top-k + token log-prob + tail), anchor and server call by call, at two batch sizes; the added CPU per returned position is the slope
  (added(B_large) - added(B_small)) / (positions(B_large) - positions(B_small)), so per-call costs
  (parsing, routing, the batcher's hop) do not count in it. Medians over repeats.
- added_latency: one-sequence calls, wall time of a path minus the anchor's, medians over repeats:
  our TeacherClient over HTTP (one kept-alive connection) and over gRPC, each call right after an anchor
  call (a trainer's own work between its calls), the paths in a random order per repeat; and curl sending
  every request of one invocation on one kept-alive connection (its first request, which opens the
  connection, left out).
- latency_breakdown: the same one-sequence call sent raw (our client's HTTP stack, a gRPC stub), with the server's
  own account of it (its `server-timing`: parse, queue, forward, encode, total): what the wall time spends
  inside the server's stages, in the server outside them, and outside the server (both network stacks
  and the client). Given the anchor, each call follows one as in added_latency, and the anchor's own call
  on the next sequence is timed too: the server's forward stage against the same work in-process, in the
  same conditions.
- latency_floors: what no service on these transports and this codec can avoid, from
  bench/transport_floor.py (the server's HTTP and gRPC stacks answering without the service, the same
  clients: a constant payload, and the answer encoded on every call and decoded by the client): added -
  floor is the service's own per-call work.
- fairness: `tests/reliability/loadgen.py` (64 closed-loop clients on loopback) against a server with
  default settings (result cache off); p99 / p50 latency of the answers.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import post_json, summarize

CPU_VARIANTS = ("http-binary", "http-json", "grpc-binary")
LATENCY_VARIANTS = ("client-http", "curl-http", "client-grpc")
def threads_cpu_seconds(pid: int, prefix: str | None = None) -> float:
    """CPU time of the live threads of `pid` (those whose OS name starts with `prefix`, os_threads.py,
    when given) from the scheduler's own account, /proc/PID/task/*/schedstat in nanoseconds: fine enough
    for one call, which utime + stime's clock ticks (10 ms) are not. Threads that ended no longer count,
    so compare spans in which the process keeps its threads (the server's are long-lived: the event loop,
    the model's worker, the encoding pool, gRPC's)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if prefix is None or (task / "comm").read_text().startswith(prefix):
                total += int((task / "schedstat").read_text().split()[0])
        except OSError:  # the thread ended between the listing and the read
            continue
    return total / 1e9


def settle(pid: int, timeout: float = 0.02) -> None:
    """Wait until none of `pid`'s threads is running or runnable (state R in /proc/PID/task/*/stat), for at
    most `timeout` seconds. The scheduler's account that `threads_cpu_seconds` reads is brought up to date
    when a thread leaves the CPU (or at a tick), so a reading taken right after a call returns, while the
    server still finishes it (writes the response, its log line, its metrics), would miss that run of the
    thread: read after `settle`."""
    deadline = time.perf_counter() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            try:  # "TID (comm) S ...": the state follows the last ")" (a comm may hold one)
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
            except (OSError, IndexError):
                continue
        if "R" not in states or time.perf_counter() >= deadline:
            return
        time.sleep(0.0002)


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of `pid`'s main thread (the server's event loop; its thread id is the process id), from
    the same scheduler account as `threads_cpu_seconds`."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def cpu_per_position(
    pid: int,
    anchor: Callable,
    calls: dict[str, Callable],
    vocab: int,
    *,
    batches: tuple[int, int],
    seq_len: int,
    start: int,
    top_k: int,
    calls_per_rep: int,
    reps: int,
    engine_threads: str | None = None,
) -> dict:
    """{variant: {"us_per_position": [...per rep], "added_ms_per_call": {B: [...]}}} (see the module doc).
    With `engine_threads` (an OS thread-name prefix, e.g. "vllm-"), also "outside_engine_us_per_position":
    the same slope of the server's CPU outside those threads (no anchor subtracted)."""
    rng = np.random.default_rng(1)
    positions = {b: b * (seq_len - start) for b in batches}
    added: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in calls}
    outside: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in calls}

    def cpu_outside_engine() -> float:
        return threads_cpu_seconds(pid) - threads_cpu_seconds(pid, engine_threads) if engine_threads else 0.0

    for rep in range(reps + 1):  # rep 0 warms up
        for batch in batches:
            for variant, call in calls.items():
                # Call by call, the anchor and the server on the same sequences: a slow moment of the
                # shared machine then weighs on both sides of the difference alike.
                anchor_cpu = server_cpu = outside_cpu = 0.0
                for _ in range(calls_per_rep):
                    s = rng.integers(0, vocab, (batch, seq_len), dtype=np.int64)
                    begin = time.process_time()
                    anchor(s, start, top_k)
                    anchor_cpu += time.process_time() - begin
                    settle(pid)
                    before, before_outside = threads_cpu_seconds(pid), cpu_outside_engine()
                    call(s, start, top_k)
                    settle(pid)
                    server_cpu += threads_cpu_seconds(pid) - before
                    outside_cpu += cpu_outside_engine() - before_outside
                if rep > 0:
                    added[variant][batch].append((server_cpu - anchor_cpu) / calls_per_rep)
                    outside[variant][batch].append(outside_cpu / calls_per_rep)
    small, large = batches

    def slopes(by_batch: dict[int, list[float]]) -> list[float]:
        return [(a_large - a_small) / (positions[large] - positions[small]) * 1e6
                for a_small, a_large in zip(by_batch[small], by_batch[large], strict=True)]  # fmt: skip

    out = {}
    for variant, by_batch in added.items():
        out[variant] = {
            "us_per_position": slopes(by_batch),
            "added_ms_per_call": {str(b): [v * 1000 for v in by_batch[b]] for b in batches},
        }
        if engine_threads:
            out[variant]["outside_engine_us_per_position"] = slopes(outside[variant])
    return out


def curl_seconds(url: str, body: bytes, requests: int) -> list[float]:
    """time_total of each of `requests` POSTs that one curl invocation sends on one connection."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        command = ["curl", "-s", "-w", "%{time_total} %{num_connects}\n", "-H", "content-type: application/json",
                   "--data-binary", f"@{f.name}", *(["-o", "/dev/null", url] * requests)]  # fmt: skip
        lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.split()
    times, connects = [float(x) for x in lines[0::2]], [int(x) for x in lines[1::2]]
    if len(times) != requests or any(connects[1:]):
        raise RuntimeError(f"curl did not reuse its connection: connects per request {connects}")
    return times


def added_latency(
    http_url: str,
    model: str,
    anchor: Callable,
    calls: dict[str, Callable],
    vocab: int,
    *,
    seq_len: int,
    start: int,
    top_k: int,
    reps: int,
    pid: int | None = None,
) -> dict:
    """{variant: {"seconds": [...], "added_ms": median - anchor median, "cpu_ms": {...}}} for one-sequence
    calls. "cpu_ms" (our client's paths and the anchor; with the server's `pid`): CPU per call, in lists,
    of the calling thread ("caller": the client, or the in-process forward + top-k) and of the server's
    threads: its event loop (the main thread), the model's worker ("model-" threads) and all of them."""
    rng = np.random.default_rng(2)
    seconds: dict[str, list[float]] = {"in-process": [], **{v: [] for v in calls}}
    cpu: dict[str, dict[str, list[float]]] = {v: {} for v in seconds}

    def server_threads() -> tuple[float, float, float]:
        if pid is None:
            return 0.0, 0.0, 0.0
        settle(pid)
        return main_thread_cpu_seconds(pid), threads_cpu_seconds(pid, "model-"), threads_cpu_seconds(pid)

    paths = list(calls)
    for rep in range(reps + 1):
        # Every call right after an in-process forward + top-k, as a trainer's loop makes them (the forward
        # evicts what the call would otherwise find in the caches), and the paths in a fresh random order
        # each repeat: in a fixed order a path's place (what ran just before it) moved its median by up to
        # 0.35 ms in A/A runs (the same code on both sides of bench/service_ab.py).
        for variant in [v for i in rng.permutation(len(paths)) for v in ("in-process", paths[i])]:
            seq = rng.integers(0, vocab, (1, seq_len), dtype=np.int64)
            call = anchor if variant == "in-process" else calls[variant]
            server_before = server_threads()
            caller, begin = time.thread_time(), time.perf_counter()
            call(seq, start, top_k)
            took, caller = time.perf_counter() - begin, time.thread_time() - caller
            server = [after - before for after, before in zip(server_threads(), server_before, strict=True)]
            if rep > 0:
                seconds[variant].append(took)
                for name, value in zip(("caller", "server loop", "server model", "server all"), [caller, *server],
                                       strict=True):  # fmt: skip
                    cpu[variant].setdefault(name, []).append(value * 1000)
    body = {"model": model, "sequences": [{"token_ids": rng.integers(0, vocab, seq_len).tolist(), "start": start}],
            "top_k": top_k, "format": "binary"}  # fmt: skip
    seconds["curl-http"] = curl_seconds(http_url + "/v1/logits", json.dumps(body).encode(), reps + 1)[1:]
    base = summarize(seconds["in-process"]).median
    return {v: {"seconds": s, "added_ms": (summarize(s).median - base) * 1000, **({"cpu_ms": cpu[v]} if pid and v in cpu else {})}
            for v, s in seconds.items()}  # fmt: skip


BREAKDOWN_STAGES = ("parse", "queue", "forward", "encode")


def latency_breakdown(http_url: str, grpc_target: str, model: str, vocab: int, *, seq_len: int, start: int,
                      top_k: int, reps: int, anchor: Callable | None = None) -> dict:  # fmt: skip
    """{path: {"wall": [...], "server": [...], stage: [...]}} in ms per call, for one-sequence binary calls
    sent raw over HTTP (the blocking client's own HTTP connections, one kept alive) and gRPC, from their
    `server-timing`. With `anchor`: every call right after an anchor call, and "anchor": {"wall": [...]}, the
    anchor's calls timed in the same rounds."""
    import grpc
    import httpx

    from dualdistill.client.plain_http import PlainHttpConnections
    from dualdistill.protocol.v1 import teacher_pb2 as pb
    from dualdistill.protocol.v1 import teacher_pb2_grpc

    rng = np.random.default_rng(4)
    out: dict[str, dict[str, list[float]]] = {}
    url = httpx.URL(http_url)
    http = PlainHttpConnections(url.host, url.port)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)

        def http_call(ids: list[int]) -> str:
            body = {"model": model, "sequences": [{"token_ids": ids, "start": start}], "top_k": top_k,
                    "format": "binary"}  # fmt: skip
            headers, _ = post_json(http, "/v1/logits", json.dumps(body).encode())
            return headers["server-timing"]

        def grpc_call(ids: list[int]) -> str:
            request = pb.LogitsRequest(model=model, sequences=[pb.Sequence(token_ids=ids, start=start)],
                                       top_k=top_k, format="binary")  # fmt: skip
            _, call = stub.GetLogits.with_call(request, timeout=60)
            return dict(call.trailing_metadata())["server-timing"]

        def anchor_call(ids: list[int]) -> None:
            assert anchor is not None
            anchor(np.array([ids], dtype=np.int64), start, top_k)

        paths = [("http", http_call), ("grpc", grpc_call), *([("anchor", anchor_call)] if anchor else [])]
        for rep in range(reps + 1):  # rep 0 warms up
            for path, send in [paths[i] for i in rng.permutation(len(paths))]:
                if anchor is not None:  # the caller's own work before the call, as in added_latency
                    anchor(rng.integers(0, vocab, (1, seq_len), dtype=np.int64), start, top_k)
                ids = rng.integers(0, vocab, seq_len).tolist()
                begin = time.perf_counter()
                timing = send(ids)
                wall = (time.perf_counter() - begin) * 1e3
                if rep == 0:
                    continue
                if path == "anchor":
                    out.setdefault(path, {"wall": []})["wall"].append(wall)
                    continue
                stages = {name: float(dur) for name, _, dur in
                          (part.partition(";dur=") for part in timing.split(", "))}  # fmt: skip
                record = out.setdefault(path, {"wall": [], "server": [], **{s: [] for s in BREAKDOWN_STAGES}})
                record["wall"].append(wall)
                record["server"].append(stages["total"])
                for stage in BREAKDOWN_STAGES:
                    record[stage].append(stages.get(stage, 0.0))
    http.close()
    return {path: out[path] for path, _ in paths}  # the paths in one order, whatever order they ran in


def fairness(model_dir: Path, *, clients: int, seconds: float, server_args: tuple[str, ...] = (),
             sampled: bool = True) -> dict:  # fmt: skip
    """loadgen's report (p50/p99 ms, throughput, statuses) against a default server with the cache off (and
    `server_args`, e.g. another engine; `sampled=False` for an engine without "sample" mode)."""
    from tests.fixtures.server_process import start_server
    from tests.reliability.loadgen import LOAD_SERVER_ARGS, MODEL, run_load

    with start_server({MODEL: model_dir}, *LOAD_SERVER_ARGS, *server_args, ready_timeout=600,
                      wire_kernels="auto") as server:  # fmt: skip
        report = run_load(server.http_url, clients=clients, seconds=seconds, sampled=sampled)
    out = json.loads(report.to_json())
    out["p99_over_p50"] = report.p99_ms / report.p50_ms
    return out


# ---- goals and Markdown -----------------------------------------------------------------------------

CPU_GOAL_US = 10.0  # added server CPU per returned position at k = 128, binary (HTTP and gRPC)
LATENCY_GOAL_MS = 3.0  # added latency of a one-sequence call
JSON_GOAL_RATIO = 3.0  # JSON's added CPU per position within this factor of binary's
FAIRNESS_GOAL = 3.0  # p99 <= this x p50 under the loadgen clients


def _median(values: list[float]) -> float:
    return summarize(values).median


def render(cost: dict) -> str:
    lines = []
    cpu = cost.get("cpu")
    if cpu:
        c = cost["cpu_settings"]
        small, large = c["batches"]
        lines.append(
            f"\nServer CPU added per returned position ({c['model']}, T = {c['seq_len']}, start = {c['start']}, "
            f"top_k = {c['top_k']}): server CPU (its threads' scheduler time) minus the in-process "
            f"anchor's CPU for the same forward + top-k on the same sequences, call by call, over {c['calls_per_rep']} calls per repeat, "
            f"{c['reps']} repeats; per position = slope between B = {small} and B = {large}. "
            f"Goal: <= {CPU_GOAL_US:g} us (binary), JSON <= {JSON_GOAL_RATIO:g}x binary.\n"
        )
        rows = []
        for variant, r in cpu.items():
            per_call = r["added_ms_per_call"]
            rows.append(
                [variant, f"{_median(r['us_per_position']):.1f} [{min(r['us_per_position']):.1f}, "
                 f"{max(r['us_per_position']):.1f}]",
                 f"{_median(per_call[str(small)]):.2f}", f"{_median(per_call[str(large)]):.1f}"]
            )  # fmt: skip
        lines.append(_table(["path", "added CPU us/position [min, max]", f"added CPU ms/call B={small}",
                             f"added CPU ms/call B={large}"], rows))  # fmt: skip
    latency = cost.get("latency")
    if latency:
        rows = latency_rows(latency)
        lines.append(
            f"\nLatency of a one-sequence call ({cost['cpu_settings']['seq_len']} tokens, binary, top_k = "
            f"{cost['cpu_settings']['top_k']}), median of {len(latency['client-http']['seconds'])} calls per path"
            + (" (each of our client's calls right after an in-process call, as a trainer makes them between its own "
               "steps; the paths in a random order per repeat)" if cost.get("latency_after_anchor") else "")
            + f"; added = path - in-process. curl: one invocation, every request on one kept-alive connection, the "
            f"first (connecting) one left out. Goal: added <= {LATENCY_GOAL_MS:g} ms.\n"
        )
        lines.append(_table(["path", "ms per call", "added ms"], rows))
        if "cpu_ms" in latency["in-process"]:
            lines.append(
                "\nThe same calls' CPU, ms per call (median): the calling thread's (our client; for in-process, "
                "its forward + top-k) and the server's threads' (scheduler time): the event loop (HTTP or gRPC "
                "stack, validation, encoding), the model's worker (the forward and its post-processing) and all "
                "of them. The calls run one at a time, so wall time is about the sum of the caller's and the "
                "server's CPU. An idle server runs a short forward on its event loop's thread (`inline_forward_ms`, "
                "core/batcher.py), so with the default settings the loop's column holds the forward too.\n"
            )
            lines.append(_table(["path", "wall", "caller CPU", "server event loop", "server model thread",
                                 "server, all threads"], latency_cpu_rows(latency)))  # fmt: skip
    breakdown = cost.get("breakdown")
    if breakdown:
        lines.append(
            f"\nWhere a one-sequence call's time goes (the same call sent raw: our client's own HTTP connection, "
            f"a gRPC stub), from the server's `server-timing` of each call, ms, median of "
            f"{len(next(iter(breakdown.values()))['wall'])} calls: the stages; \"server, other\" = the server's "
            f"total (first byte in to the response's start) minus its stages (HTTP or gRPC stack, routing, the "
            f"hops between the event loop and the model's thread); \"outside\" = wall - the server's total (the "
            f"client, both network stacks, sending the response).\n"
        )
        rows = []
        for path, r in breakdown.items():
            if path == "anchor":
                continue
            other = [t - sum(r[s][i] for s in BREAKDOWN_STAGES) for i, t in enumerate(r["server"])]
            outside = [w - t for w, t in zip(r["wall"], r["server"], strict=True)]
            rows.append(breakdown_row(path, r, other, r["server"], outside))
        lines.append(_table(["path", "wall", *BREAKDOWN_STAGES, "server, other", "server total", "outside"], rows))
        if "anchor" in breakdown:
            after_call = latency.get("in-process") if latency else None
            lines.append(
                f"\nEach of those calls came right after an in-process forward + top-k (the trainer's own work), and "
                f"so did an in-process call on a fresh sequence, timed in the same rounds: "
                f"{_median(breakdown['anchor']['wall']):.2f} ms"
                + (f", against {_median(after_call['seconds']) * 1000:.2f} ms for the same in-process call right "
                   f"after one of our client's calls (the latency table above)" if after_call else "")
                + ", and the server's forward stage (the same forward + top-k, with the tail and token log-probs): "
                + ", ".join(f"{_median(r['forward']):.2f} ms ({path})" for path, r in breakdown.items() if path != "anchor")
                + ". The same forward takes longer after other work than right after itself.\n"
            )
    floors = latency_floors(cost)
    if floors:
        calls = len(next(iter(cost["floor"]["ms"].values())))
        lines.append(
            f"\nThe floor under that added latency (bench/transport_floor.py, same run, median of {calls} calls): "
            f"the server's own HTTP and gRPC stacks (an ASGI route on uvicorn with the server's protocol and socket "
            f"settings; grpc.aio) answering with no parse, model or batcher, timed with the same clients: "
            f"\"constant\" sends one answer's payload encoded once (the transports alone); \"encoded\" encodes "
            f"the answer's results on every call, and our clients decode it (the transports and the codec, in "
            f"place). No service on these transports and this codec answers faster than \"encoded\"; the "
            f"service's own = added - encoded (validation, the hand-off to the model's thread and back, "
            f"post-processing beyond the anchor's, metrics and logs).\n"
        )
        rows = [[v, f"{latency[v]['added_ms']:+.2f}", f"{alone:.2f}", f"{coded - alone:.2f}", f"{coded:.2f}",
                 f"{latency[v]['added_ms'] - coded:+.2f}"] for v, (alone, coded) in floors.items()]  # fmt: skip
        lines.append(_table(["path", "added ms", "constant (transports)", "codec in place", "encoded (floor)",
                             "service's own"], rows))  # fmt: skip
    fair = cost.get("fairness")
    if fair:
        lines.append(
            f"\nFairness (`tests/reliability/loadgen.py`, {fair['clients']} closed-loop HTTP clients for "
            f"{fair['seconds']:.0f} s against a default server with `--cache none`): {fair['requests']} answers, "
            f"{fair['throughput_rps']:.0f} req/s, p50 {fair['p50_ms']:.1f} ms, p90 {fair['p90_ms']:.1f} ms, "
            f"p99 {fair['p99_ms']:.1f} ms, max {fair['max_ms']:.1f} ms: p99 / p50 = {fair['p99_over_p50']:.2f} "
            f"(goal <= {FAIRNESS_GOAL:g}). Statuses: {fair['statuses']}. The server freezes its startup objects "
            f"before it becomes ready, and the load generator its own before the run (gc.freeze): with torch "
            f"imported, a full garbage collection in either process walked about a million of them (260-300 ms "
            f"with every request waiting), and those pauses were the p99 (`bench/service_ab.py` measures both "
            f"servers side by side).\n"
        )
    return "\n".join(lines)


def latency_rows(latency: dict) -> list[list[str]]:
    """[path, ms per call, added ms] of `added_latency`'s result (medians; the anchor has no "added")."""
    return [[v, f"{_median(r['seconds']) * 1000:.2f}", "" if v == "in-process" else f"{r['added_ms']:+.2f}"]
            for v, r in latency.items()]  # fmt: skip


def latency_cpu_rows(latency: dict) -> list[list[str]]:
    rows = []
    for variant, r in latency.items():
        if "cpu_ms" not in r:
            continue
        c = r["cpu_ms"]
        server = [f"{_median(c[name]):.2f}" for name in ("server loop", "server model", "server all")]
        if variant == "in-process":
            server = ["", "", ""]
        rows.append([variant, f"{_median(r['seconds']) * 1000:.2f}", f"{_median(c['caller']):.2f}", *server])
    return rows


def breakdown_row(path: str, record: dict, *derived: list[float]) -> list[str]:
    """[path, wall, each BREAKDOWN_STAGES, each of `derived`]: medians in ms of one `latency_breakdown` path,
    `derived` being per-call series the caller computes from it (a difference's median, not the
    difference of medians)."""
    series = [record["wall"], *(record[s] for s in BREAKDOWN_STAGES), *derived]
    return [path, *(f"{_median(values):.2f}" for values in series)]


# Each latency path's floor: the client that bench/transport_floor.py `measure` timed for it.
FLOOR_OF = {"client-http": "http", "client-grpc": "grpc", "curl-http": "curl"}


def latency_floors(cost: dict) -> dict[str, tuple[float, float]]:
    """{latency path: (constant ms, encoded ms)}: its transports alone, and with the codec in place."""
    floor, latency = cost.get("floor"), cost.get("latency") or {}
    if not floor:
        return {}
    ms = floor["ms"]
    return {v: (_median(ms[f"{c} constant"]), _median(ms[f"{c} encoded"])) for v, c in FLOOR_OF.items() if v in latency}


def _table(headers: list[str], rows: list[list]) -> str:
    from bench.common import markdown_table

    return markdown_table(headers, rows)


def goals(cost: dict, device: str) -> list[dict]:
    out = []
    cpu = cost.get("cpu") or {}
    binary = {v: _median(r["us_per_position"]) for v, r in cpu.items() if v != "http-json"}
    if binary:
        cells = ", ".join(f"{v}: {x:.1f} us" for v, x in binary.items())
        out.append({"item": f"service CPU per returned position, k = 128, binary ({device})",
                    "goal": f"<= {CPU_GOAL_US:g} us", "measured": cells,
                    "met": all(x <= CPU_GOAL_US for x in binary.values())})  # fmt: skip
    if "http-json" in cpu and "http-binary" in cpu:
        ratio = _median(cpu["http-json"]["us_per_position"]) / max(binary["http-binary"], 1e-9)
        out.append({"item": f"service CPU per position, JSON vs binary HTTP ({device})",
                    "goal": f"<= {JSON_GOAL_RATIO:g}x", "measured": f"{ratio:.2f}x",
                    "met": ratio <= JSON_GOAL_RATIO})  # fmt: skip
    latency = {v: r["added_ms"] for v, r in (cost.get("latency") or {}).items() if v != "in-process"}
    if latency:
        out.append({"item": f"added latency of a one-sequence call ({device})", "goal": f"<= {LATENCY_GOAL_MS:g} ms",
                    "measured": ", ".join(f"{v}: {x:+.1f} ms" for v, x in latency.items()) + "".join(
                        f" (floor, the transports and the codec without the service: {', '.join(f'{v} {coded:.1f}' for v, (_, coded) in floors.items())} ms)"
                        for floors in [latency_floors(cost)] if floors),
                    "met": all(x <= LATENCY_GOAL_MS for x in latency.values())})  # fmt: skip
    fair = cost.get("fairness")
    if fair:
        out.append({"item": f"fairness, {fair['clients']} concurrent clients ({device})",
                    "goal": f"p99 <= {FAIRNESS_GOAL:g}x p50",
                    "measured": f"p50 {fair['p50_ms']:.1f} ms, p99 {fair['p99_ms']:.1f} ms ({fair['p99_over_p50']:.2f}x)",
                    "met": fair["p99_over_p50"] <= FAIRNESS_GOAL})  # fmt: skip
    return out


def reading(cost: dict) -> str:
    """What the per-position figures are made of, from this run's CPU table and stage profile."""
    cpu, profile = cost.get("cpu") or {}, cost.get("profile")
    if not profile or "http-binary" not in cpu or "http-json" not in cpu:
        return ""
    stage = profile["us_per_position"]
    binary, json_ = _median(cpu["http-binary"]["us_per_position"]), _median(cpu["http-json"]["us_per_position"])
    text = (
        f"\nReading: per returned position the binary HTTP path adds {binary:.0f} us of server CPU and the JSON "
        f"one {json_:.0f} us. Of the binary path's, `wire.encode` alone takes {stage['wire.encode']:.0f} us "
        f"(stage table; the lossy codec: KL-sized quantizer, id dictionary, integer streams, zstd) and the "
        f"post-processing beyond what the anchor pays a few more (compute_logits - forward = "
        f"{stage['compute_logits'] - stage['forward']:.0f} us includes the top-k and tail the anchor computes "
        f"too). The JSON body takes {stage['JSON body']:.0f} us: orjson writes the numpy arrays without a Python "
        f"object per entry. On the client, `wire.decode` takes {stage.get('wire.decode (client)', float('nan')):.0f} "
        f"us per position."
    )
    paths = profile.get("codec_paths")
    if paths:
        large = max(paths["numba"]["encode"], key=int)
        text += (
            f" The compiled loops make encode {_ratio(paths, 'encode', '1'):.2f}x / "
            f"{_ratio(paths, 'encode', large):.2f}x and decode {_ratio(paths, 'decode', '1'):.2f}x / "
            f"{_ratio(paths, 'decode', large):.2f}x faster than numpy alone (B = 1 / B = {large}; a lossy payload's "
            f"integer work is one compiled call each way); what is left of the encoder is numpy's float passes of "
            f"the KL-sized quantizer, the row sort and zstd."
        )
    breakdown, latency = cost.get("breakdown"), cost.get("latency")
    if breakdown and latency and "http" in breakdown:
        r = breakdown["http"]
        anchor = _median(latency["in-process"]["seconds"]) * 1000
        other = _median([t - sum(r[s][i] for s in BREAKDOWN_STAGES) for i, t in enumerate(r["server"])])
        outside = _median([w - t for w, t in zip(r["wall"], r["server"], strict=True)])
        text += (
            f" A one-sequence HTTP call took {_median(r['wall']):.1f} ms against {anchor:.1f} ms for the anchor's "
            f"forward + top-k in-process: the server's forward stage {_median(r['forward']):.1f} ms (the forward "
            f"and all the post-processing; on the event loop's thread when the server is idle), encoding {_median(r['encode']):.1f} ms, parse "
            f"and queue {_median(r['parse']) + _median(r['queue']):.1f} ms, the rest of the server (transport "
            f"stack, metrics, logs) {other:.1f} ms, and {outside:.1f} ms outside the server (the client's HTTP "
            f"stack, the loopback network, the response's bytes)."
        )
    floors = latency_floors(cost)
    if "client-http" in floors and latency:
        alone, coded = floors["client-http"]
        added = latency["client-http"]["added_ms"]
        text += (
            f" Against the {LATENCY_GOAL_MS:g} ms goal: with no service at all, the server's own transports and "
            f"codec already take {coded:.1f} ms of a one-sequence call through our client ({alone:.1f} ms the "
            f"transports, {coded - alone:.1f} ms encoding and decoding the answer in place: the codec's fixed "
            f"cost per call, the quantizer's KL search, zstd on each of 20 streams, header and CRC, which a "
            f"one-sequence answer does not amortize), so the goal leaves the service {LATENCY_GOAL_MS - coded:+.1f} ms for its own work, "
            f"which took {added - coded:.1f} ms."
        )
    return text + "\n"


def _ratio(paths: dict, op: str, batch: str) -> float:
    return _median(paths["numpy"][op][batch]) / _median(paths["numba"][op][batch])
