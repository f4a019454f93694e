"""The blocking HTTP transport's two stacks side by side: its own HTTP/1.1 connections
(client/dualdistill/client/plain_http.py and http11.py, used for plain http:// without a proxy) and httpx's
connection pool (proxies, TLS, and the asyncio client).

    python bench/client_http.py [--reps 200] [--rounds 6]

One floor server (bench/transport_floor.py: the service's own uvicorn stack, no model, encoding a
one-sequence answer on every call) and two `HttpTransport`s, one per stack, sending the same one-sequence
logits call (T = 64, start = 8, top_k = 128, binary) and decoding its answer. Each round times `reps`
calls per stack back to back ("busy"), then `reps` calls per stack each after a 5 ms sleep ("after idle":
a trainer's thread sleeps while the teacher computes); the stacks alternate call by call, and which one
goes first alternates by round. Prints, per stack and pattern, the median over rounds of each round's
median wall time and client CPU (thread time) per call, and the median of the per-round ratios
httpx / plain_http.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import ROOT, markdown_table, source_pythonpath

SEQ_LEN, START, TOP_K = 64, 8, 128
IDLE_S = 0.005
STACKS = ("plain_http", "httpx")


def _rounds(url: str, reps: int, rounds: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(stack, pattern): [(median wall s, median CPU s) per round]}."""
    from dualdistill.client import operations as ops
    from dualdistill.client.transport_http import HttpTransport
    from dualdistill.protocol.params import LogitsParams

    transports = {stack: HttpTransport(url, None, plain_http=stack == "plain_http") for stack in STACKS}
    rng = np.random.default_rng(0)
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for round_index in range(rounds + 1):  # round 0 warms up
            order = STACKS if round_index % 2 else STACKS[::-1]
            for pattern, idle in (("busy", 0.0), ("after idle", IDLE_S)):
                samples: dict[str, list[tuple[float, float]]] = {stack: [] for stack in order}
                for _ in range(reps):
                    for stack in order:
                        ids = rng.integers(0, 320, SEQ_LEN).tolist()
                        op = ops.logits("floor", [ids], [START], LogitsParams(top_k=TOP_K), format="binary",
                                         deadline_seconds=None)
                        if idle:
                            time.sleep(idle)
                        cpu, wall = time.thread_time(), time.perf_counter()
                        transports[stack].send(op, 60.0)
                        samples[stack].append((time.perf_counter() - wall, time.thread_time() - cpu))
                if round_index:
                    for stack, values in samples.items():
                        walls, cpus = zip(*values, strict=True)
                        out.setdefault((stack, pattern), []).append((float(np.median(walls)),
                                                                     float(np.median(cpus))))  # fmt: skip
    finally:
        for transport in transports.values():
            transport.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="calls per stack, pattern and round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    from bench.transport_floor import save_results
    from bench.wire_encode_speed import tiny_vocab_response

    env = {**os.environ, "PYTHONPATH": source_pythonpath()}
    with tempfile.TemporaryDirectory(prefix="client-http-") as tmp:
        results_path = Path(tmp) / "results.npz"
        save_results(tiny_vocab_response()[:1], results_path)
        child = subprocess.Popen([sys.executable, str(ROOT / "bench" / "transport_floor.py"), "serve", "--results",
                                  str(results_path)], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        try:
            line = child.stdout.readline().split()  # type: ignore[union-attr]
            if not line or line[0] != "ports":
                raise RuntimeError(f"the floor server did not start (exit code {child.poll()})")
            rounds = _rounds(f"http://127.0.0.1:{line[1]}", args.reps, args.rounds)
        finally:
            child.terminate()
            child.wait(timeout=30)
    rows = []
    for pattern in ("busy", "after idle"):
        ours, theirs = rounds[("plain_http", pattern)], rounds[("httpx", pattern)]
        for stack, values in (("plain_http", ours), ("httpx", theirs)):
            rows.append([pattern, stack, f"{np.median([w for w, _ in values]) * 1e3:.3f}",
                         f"{np.median([c for _, c in values]) * 1e3:.3f}"])  # fmt: skip
        ratio = np.median([t[0] / o[0] for o, t in zip(ours, theirs, strict=True)])
        rows.append([pattern, "httpx / plain_http (wall, per round)", f"{ratio:.2f}x", ""])
    print(f"One-sequence logits calls through the blocking HTTP transport against a floor server, {args.rounds} "
          f"rounds of {args.reps} calls per stack and pattern; medians over rounds of per-round medians:\n")  # fmt: skip
    print(markdown_table(["pattern", "stack", "wall ms per call", "client CPU ms per call"], rows))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
