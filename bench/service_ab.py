"""Before / after of the service's per-call latency and fairness: two checkouts' servers in one run.

    python bench/service_ab.py --before DIR [--after DIR] [--reps 40] [--cpu-reps 5] [--thread-rounds 8]
        [--call-pairs 400] [--rounds 2] [--fairness-seconds 20] [--before-args "..."] [--after-args "..."]
        [--engine hf|vllm]

DIR is a checkout of the project (e.g. `git worktree add /tmp/before main`); --after defaults to this
one. `--before-args` / `--after-args` add `serve` options to one side's servers, so a setting can be
compared on one checkout (`--before . --after-args "--inline-forward-ms 20"`). `--engine vllm` serves the
tiny model (then 256 wide: vLLM's CPU attention needs a head size of 64) on both sides with the vllm engine
(`--engine vllm --max-seq-len 256`); the in-process anchor stays a transformers forward. Both servers (`dualdistill serve` from each checkout's own code, tiny model, `--cache none`) run
side by side, and every measurement alternates between them, so a slow moment of a shared machine moves
both sides:
- added latency of a one-sequence call (bench/service_cost.py `added_latency`'s paths: our client over
  HTTP and gRPC, each side's own client code in a process of its own, and curl on one kept-alive
  connection; binary, T = 64, start = 8, top_k = 128), as the median call minus the median in-process
  call of this process, with our client's CPU per call (the calling thread's);
- server CPU per returned position and per one-sequence call: each server process's CPU (its threads'
  scheduler time, nanoseconds) per call of B = 1 and B = 32 sequences (binary over HTTP), the slope per
  position and the B = 1 call itself, alternating sides, next to the in-process anchor's;
- the server's threads' CPU per one-sequence call (its event loop and the model's worker), over rounds of
  calls with the sides alternating, and the after - before differences paired round by round;
- the same one-sequence calls paired call by call (`--call-pairs`): this process's client against both
  servers, one call per side and transport per round in a fresh random order, each after an in-process
  forward; the median of the after - before differences with a bootstrap 95% interval. The steadiest of
  these measurements for a change of a tenth of a millisecond;
- fairness: this checkout's `tests/reliability/loadgen.py` (64 closed-loop clients) against each
  server's default settings, `--rounds` runs each in alternating order; p99 / p50 per run.
Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import ROOT, markdown_table, paired_difference, summarize
from bench.service_cost import curl_seconds
from tests.fixtures.server_process import SERVING_RE

SEQ_LEN, START, TOP_K = 64, 8, 128


@contextlib.contextmanager
def serve(root: Path, model_dir: Path, *args: str) -> Iterator[tuple[str, str, int]]:
    """`dualdistill serve` from `root`'s code; yields (http_url, grpc_target, pid) once it serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"PYTHONPATH": f"{root}/client{os.pathsep}{root}/server", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dualdistill.cli.main", "serve", "--host", "127.0.0.1", "--http-port", "0",
               "--grpc-port", "0", "--model", f"tiny={model_dir}", "--cache", "none", "--log-level", "warning", *args]  # fmt: skip
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = SERVING_RE.match(line.strip())
            if match:
                break
        else:
            raise RuntimeError(f"the server of {root} exited before serving (code {process.wait()})")
        yield f"http://{match.group(1)}", match.group(2), process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


# One side's client code, in a process of its own (that checkout's PYTHONPATH): reads one JSON line per call,
# [path, token ids], makes that call and writes its wall seconds and this thread's CPU seconds (the pipe's
# round trip is not timed).
CLIENT_WORKER = r"""
import json, sys, time
from dualdistill import TeacherClient
http_url, grpc_target, start, top_k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
clients = {"client-http": TeacherClient(http_url, format="binary", timeout=60),
           "client-grpc": TeacherClient(grpc_target, transport="grpc", format="binary", timeout=60)}
for line in sys.stdin:
    path, ids = json.loads(line)
    begin, cpu = time.perf_counter(), time.thread_time()
    clients[path].logits("tiny", [ids], [start], top_k=top_k)
    print(time.perf_counter() - begin, time.thread_time() - cpu, flush=True)
"""


@contextlib.contextmanager
def client_worker(root: Path, http_url: str, grpc_target: str) -> Iterator[subprocess.Popen]:
    """CLIENT_WORKER on `root`'s code, against one server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"PYTHONPATH": f"{root}/client{os.pathsep}{root}/server", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CLIENT_WORKER, http_url, grpc_target, str(START), str(TOP_K)]
    process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(timeout=60)


def _timed(fn: Callable) -> Callable[[np.ndarray, int, int], float]:
    """`fn` as a call that returns its wall seconds, as `_worker_call`'s do."""

    def call(sequence: np.ndarray, start: int, k: int) -> float:
        begin = time.perf_counter()
        fn(sequence, start, k)
        return time.perf_counter() - begin

    return call


def _worker_call(worker: subprocess.Popen, path: str, cpu: list[float]) -> Callable[[np.ndarray, int, int], float]:
    """A call through `worker` that returns its wall seconds and appends its client CPU seconds to `cpu`."""

    def call(sequence: np.ndarray, start: int, k: int) -> float:
        worker.stdin.write(json.dumps([path, sequence[0].tolist()]) + "\n")  # type: ignore[union-attr]
        worker.stdin.flush()  # type: ignore[union-attr]
        wall, seconds = worker.stdout.readline().split()  # type: ignore[union-attr]
        cpu.append(float(seconds))
        return float(wall)

    return call


def latency(servers: dict[str, tuple[str, str, int]], roots: dict[str, Path], model_dir: Path, reps: int
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:  # fmt: skip
    """(wall seconds per one-sequence call per path ("in-process", "<side> client-http", ...), the client
    process's CPU seconds per call per client path); each side's calls are made by that side's own client
    code (CLIENT_WORKER), so the client's share of a change counts too."""
    from bench.service_overhead import InProcess

    anchor = InProcess(model_dir, "cpu", "float32", 1)
    rng = np.random.default_rng(2)
    with contextlib.ExitStack() as stack:
        calls: dict[str, Callable] = {}
        client_cpu: dict[str, list[float]] = {}
        for side, (http_url, grpc_target, _) in servers.items():
            worker = stack.enter_context(client_worker(roots[side], http_url, grpc_target))
            for path in ("client-http", "client-grpc"):
                calls[f"{side} {path}"] = _worker_call(worker, path, client_cpu.setdefault(f"{side} {path}", []))
        calls["in-process"] = _timed(anchor)
        paths = list(calls)
        seconds: dict[str, list[float]] = {path: [] for path in calls}
        for rep in range(reps + 1):  # rep 0 warms up
            # a fresh random order each repeat: with the order fixed and reversed every other repeat, a path's
            # place (what ran just before it) moved its median by 0.3-0.35 ms in A/A runs (the same code on
            # both sides, 800 repeats); in random orders `paired_calls` A/A gave -0.07 (HTTP), -0.01 ms (gRPC)
            for path in [paths[i] for i in rng.permutation(len(paths))]:
                took = calls[path](rng.integers(0, 320, (1, SEQ_LEN), dtype=np.int64), START, TOP_K)
                if rep > 0:
                    seconds[path].append(took)
    body = json.dumps({"model": "tiny", "top_k": TOP_K, "format": "binary",
                       "sequences": [{"token_ids": rng.integers(0, 320, SEQ_LEN).tolist(), "start": START}]})  # fmt: skip
    for chunk in range(4):  # curl: a quarter of the repeats per invocation, alternating sides
        for side in list(servers) if chunk % 2 == 0 else list(reversed(servers)):
            url = servers[side][0] + "/v1/logits"
            seconds.setdefault(f"{side} curl-http", []).extend(curl_seconds(url, body.encode(), max(reps // 4, 1) + 1)[1:])
    return seconds, {path: cpu[1:] for path, cpu in client_cpu.items()}  # without the warm-up call


def _clients(servers: dict[str, tuple[str, str, int]]) -> dict:
    """{(side, "http" | "grpc"): this process's TeacherClient (binary) to that side's server}."""
    from dualdistill import TeacherClient

    return {(side, transport): TeacherClient(http if transport == "http" else grpc_target, transport=transport,
                                             format="binary", timeout=60)
            for side, (http, grpc_target, _) in servers.items() for transport in ("http", "grpc")}  # fmt: skip


def paired_calls(servers: dict[str, tuple[str, str, int]], model_dir: Path, rounds: int) -> dict[str, dict]:
    """{transport: {"before": [ms], "after": [ms]}}: one-sequence calls of this process's client (the same client
    code for both sides: only the servers differ), `rounds` rounds of one call per (side, transport) in a
    fresh random order, each call right after an in-process forward + top-k as a trainer's loop makes them
    (the forward evicts what the call would otherwise find in the caches); paired round by round."""
    from bench.service_overhead import InProcess

    anchor = InProcess(model_dir, "cpu", "float32", 1)
    clients = _clients(servers)
    keys = list(clients)
    rng = np.random.default_rng(7)
    out: dict[str, dict[str, list[float]]] = {"http": {}, "grpc": {}}
    for index in range(rounds + 20):  # the first 20 rounds warm up
        for side, transport in [keys[i] for i in rng.permutation(len(keys))]:
            sequence = rng.integers(0, 320, (1, SEQ_LEN), dtype=np.int64)
            anchor(sequence, START, TOP_K)
            begin = time.perf_counter()
            clients[side, transport].logits("tiny", sequence.tolist(), [START], top_k=TOP_K)
            if index >= 20:
                out[transport].setdefault(side, []).append((time.perf_counter() - begin) * 1e3)
    for client in clients.values():
        client.close()
    return out


def _paired_rows(paired: dict[str, dict[str, list[float]]]) -> list[list[str]]:
    """Per transport: each side's median and the median of the round-by-round differences with its 95%
    interval (bench/common.py `paired_difference`)."""
    rows = []
    for transport, sides in paired.items():
        d = paired_difference(sides["after"], sides["before"])
        rows.append([transport, f"{np.median(sides['before']):.2f}", f"{np.median(sides['after']):.2f}",
                     f"{d['median']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"])  # fmt: skip
    return rows


def server_cpu(servers: dict[str, tuple[str, str, int]], model_dir: Path, reps: int, calls: int = 6) -> dict:
    """{"slope": ..., "one_call": ...}: server CPU per returned position (binary over HTTP, our client), per
    side and repeat the slope of the server process's CPU per call between B = 1 and B = 32 (per-call costs
    drop out), and its CPU per one-sequence call (where the per-call costs are); the two servers
    alternating within each repeat; the in-process anchor's (forward + top-k) for reference."""
    from bench.service_cost import settle, threads_cpu_seconds
    from bench.service_overhead import InProcess, client_call
    from dualdistill import TeacherClient

    anchor = InProcess(model_dir, "cpu", "float32", 1)
    clients = {side: client_call(TeacherClient(http, format="binary", timeout=120), "tiny")
               for side, (http, _, _) in servers.items()}  # fmt: skip
    rng = np.random.default_rng(3)
    batches, positions = (1, 32), {b: b * (SEQ_LEN - START) for b in (1, 32)}
    slopes: dict[str, list[float]] = {"in-process": [], **{side: [] for side in servers}}
    one_call: dict[str, list[float]] = {side: [] for side in slopes}  # CPU ms of a one-sequence call
    for rep in range(reps + 1):  # rep 0 warms up
        sides = list(slopes) if rep % 2 == 0 else list(reversed(slopes))
        for side in sides:
            per_call = {}
            for b in batches:
                work = [rng.integers(0, 320, (b, SEQ_LEN), dtype=np.int64) for _ in range(calls)]
                if side == "in-process":
                    begin = time.process_time()
                    for sequences in work:
                        anchor(sequences, START, TOP_K)
                    per_call[b] = (time.process_time() - begin) / calls
                else:
                    pid = servers[side][2]
                    begin = threads_cpu_seconds(pid)
                    for sequences in work:
                        clients[side](sequences, START, TOP_K)
                    settle(pid)
                    per_call[b] = (threads_cpu_seconds(pid) - begin) / calls
            if rep > 0:
                slopes[side].append((per_call[32] - per_call[1]) / (positions[32] - positions[1]) * 1e6)
                one_call[side].append(per_call[1] * 1e3)
    return {"slope": slopes, "one_call": one_call}


def thread_cpu(servers: dict[str, tuple[str, str, int]], rounds: int, calls: int = 40) -> dict:
    """{transport: {side: [(wall, event loop CPU, model thread CPU) ms per call, one per round]}}: the server's
    own threads (scheduler time) over `calls` one-sequence calls of this process's client per round, the
    sides alternating within each round, so `paired` differences (after - before, round by round) cancel
    the machine's slower and faster moments."""
    from bench.service_cost import main_thread_cpu_seconds as loop_cpu
    from bench.service_cost import settle, threads_cpu_seconds

    clients = _clients(servers)
    rng = np.random.default_rng(5)
    out: dict[str, dict[str, list[tuple[float, float, float]]]] = {"http": {}, "grpc": {}}
    for index in range(rounds + 1):  # round 0 warms up
        for (side, transport) in (list(clients) if index % 2 == 0 else list(reversed(clients))):
            pid = servers[side][2]
            loop, model, begin = loop_cpu(pid), threads_cpu_seconds(pid, "model-"), time.perf_counter()
            for _ in range(calls):
                clients[side, transport].logits("tiny", [rng.integers(0, 320, SEQ_LEN).tolist()], [START], top_k=TOP_K)
            wall = (time.perf_counter() - begin) / calls * 1e3
            settle(pid)
            sample = (wall, (loop_cpu(pid) - loop) / calls * 1e3, (threads_cpu_seconds(pid, "model-") - model) / calls * 1e3)
            if index > 0:
                out[transport].setdefault(side, []).append(sample)
    for client in clients.values():
        client.close()
    return out


def _thread_rows(threads: dict) -> list[list[str]]:
    rows = []
    for transport, sides in threads.items():
        for side, samples in sides.items():
            rows.append([transport, side, *(f"{summarize([s[i] for s in samples]).median:.2f}" for i in range(3))])
        before, after = (np.array(sides[side]) for side in ("before", "after"))
        paired = after - before
        rows.append([transport, "after - before, paired by round", *(
            f"{np.median(paired[:, i]):+.2f} [{paired[:, i].min():+.2f}, {paired[:, i].max():+.2f}]" for i in range(3))])
    return rows


def _with_added(values: dict[str, list[float]], side: str, digits: int) -> list[str]:
    """Median [min, max] of a side's repeats, and its median minus the anchor's ("" for the anchor)."""
    v, anchor = values[side], summarize(values["in-process"]).median
    spread = f"{summarize(v).median:.{digits}f} [{min(v):.{digits}f}, {max(v):.{digits}f}]"
    return [spread, "" if side == "in-process" else f"{summarize(v).median - anchor:+.{digits}f}"]


def fairness(roots: dict[str, Path], model_dir: Path, rounds: int, seconds: float,
             serve_args: dict[str, list[str]]) -> dict[str, list[dict]]:  # fmt: skip
    from tests.reliability.loadgen import run_load

    out: dict[str, list[dict]] = {side: [] for side in roots}
    for rnd in range(rounds):
        for side in list(roots) if rnd % 2 == 0 else list(reversed(roots)):
            with serve(roots[side], model_dir, *serve_args[side]) as (http_url, _, _):
                report = run_load(http_url, clients=64, seconds=seconds)
            out[side].append({"p50_ms": report.p50_ms, "p99_ms": report.p99_ms, "rps": report.throughput_rps,
                              "load": os.getloadavg()[0], "statuses": report.statuses,
                              "unexpected": report.unexpected[:3]})  # fmt: skip
            print(f"[service_ab] fairness {side} round {rnd}: {out[side][-1]}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout after it (default: this one)")
    parser.add_argument("--reps", type=int, default=40, help="one-sequence calls per path")
    parser.add_argument("--rounds", type=int, default=2, help="loadgen runs per side (0: no fairness run)")
    parser.add_argument("--fairness-seconds", type=float, default=20.0)
    parser.add_argument("--cpu-reps", type=int, default=5, help="repeats of the server-CPU slope (0: skip it)")
    parser.add_argument("--thread-rounds", type=int, default=8,
                        help="rounds of the per-thread CPU of one-sequence calls (0: skip them)")
    parser.add_argument("--call-pairs", type=int, default=400,
                        help="rounds of one-sequence calls paired call by call, this process's client (0: skip)")
    parser.add_argument("--before-args", default="", help="extra `serve` options of the before side's servers "
                        "(one string, e.g. \"--inline-forward-ms 20\"): a setting A/B'd on one checkout")
    parser.add_argument("--after-args", default="", help="extra `serve` options of the after side's servers")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="the engine both sides serve with")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    engine_args = ["--engine", "vllm", "--max-seq-len", "256"] if args.engine == "vllm" else []
    serve_args = {"before": engine_args + shlex.split(args.before_args), "after": engine_args + shlex.split(args.after_args)}
    from tests.fixtures.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", **({"hidden_size": 256} if args.engine == "vllm" else {}))
        with serve(roots["before"], model_dir, "--max-top-k", "256", *serve_args["before"]) as before, \
                serve(roots["after"], model_dir, "--max-top-k", "256", *serve_args["after"]) as after:  # fmt: skip
            seconds, client_cpu = latency({"before": before, "after": after}, roots, model_dir, args.reps)
            cpu = server_cpu({"before": before, "after": after}, model_dir, args.cpu_reps) if args.cpu_reps else {}
            threads = thread_cpu({"before": before, "after": after}, args.thread_rounds) if args.thread_rounds else {}
            paired = paired_calls({"before": before, "after": after}, model_dir, args.call_pairs) if args.call_pairs else {}
        fair = fairness(roots, model_dir, args.rounds, args.fairness_seconds, serve_args) if args.rounds else {}
    base = summarize(seconds["in-process"]).median
    rows = [[path, f"{summarize(s).median * 1000:.2f}", "" if path == "in-process" else
             f"{(summarize(s).median - base) * 1000:+.2f}",
             f"{summarize(client_cpu[path]).median * 1000:.2f}" if path in client_cpu else ""]
            for path, s in seconds.items()]  # fmt: skip
    print(f"One-sequence calls (T = {SEQ_LEN}, start = {START}, top_k = {TOP_K}, binary), median of {args.reps} "
          f"(curl: {4 * max(args.reps // 4, 1)}); client CPU: the calling thread's CPU time per call, our client's paths:\n")
    print(markdown_table(["path", "ms per call", "added ms", "client CPU ms"], rows))
    if cpu:
        rows = [[side, *_with_added(cpu["slope"], side, 1), *_with_added(cpu["one_call"], side, 2)]
                for side in cpu["slope"]]  # fmt: skip
        print(f"\nServer process CPU, binary over HTTP, sides alternating, median [min, max] of {args.cpu_reps} "
              f"repeats: per returned position (slope between B = 1 and B = 32) and per one-sequence call; added "
              f"= minus the in-process anchor's (forward + top-k):\n")
        print(markdown_table(["server", "CPU us/position", "added us/position", "CPU ms per B=1 call",
                              "added ms per B=1 call"], rows))  # fmt: skip
    if threads:
        print(f"\nOne-sequence calls of this process's client, {args.thread_rounds} rounds of 40 calls per transport "
              "and side, sides alternating: ms per call, median over rounds; the server's own threads' CPU "
              "(scheduler time): its event loop (transport stack, validation, encoding) and the model's worker; "
              "the paired row: median [min, max] of the round-by-round differences:\n")
        print(markdown_table(["transport", "server", "wall", "event loop CPU", "model thread CPU"], _thread_rows(threads)))
    if paired:
        print(f"\nOne-sequence calls of this process's client, paired call by call: {args.call_pairs} rounds of one "
              "call per transport and side in a random order, each after an in-process forward + top-k; ms per "
              "call, median; after - before: the median of the round-by-round differences [its 95% interval]:\n")
        print(markdown_table(["transport", "before ms", "after ms", "after - before ms"], _paired_rows(paired)))
    if fair:
        rows = [[side, ", ".join(f"{r['p99_ms'] / r['p50_ms']:.2f}" for r in runs),
                 ", ".join(f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}" for r in runs),
                 ", ".join(f"{r['rps']:.0f}" for r in runs)] for side, runs in fair.items()]  # fmt: skip
        print(f"\nFairness, 64 loadgen clients, {args.fairness_seconds:g} s per run:\n")
        print(markdown_table(["server", "p99 / p50 per run", "p50 / p99 ms per run", "req/s per run"], rows))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
