"""Closed-loop HTTP load on a teacher server (Triton's L0_memory_growth / perf shape).

Each of `clients` concurrent clients sends its next POST /v1/logits as soon as the previous one is
answered, for `seconds` (and on until `min_requests` answers, if given). The mix: random token ids,
16-96 tokens per sequence, start halfway; 60 % JSON top-20, 25 % binary top-20, 15 % sampled (32 draws).
Random ids make every request a cache miss, so the forward pass is what is measured.

An answer is either a 200 whose rows match the request, or an explicit 429 with Retry-After (the client
then waits that long, as a well-behaved client does); anything else is counted as unexpected.

Reproduce the numbers in docs/reliability.md (starts its own server with the tiny test model):

    .venv/bin/python -m tests.reliability.loadgen --clients 64 --seconds 60 --min-requests 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from tests.reliability.support import rss_kib

MODEL = "tiny"
VOCAB = 320  # the tiny test model's vocabulary (tests/fixtures/tiny_model.py)
RSS_MARKS = (1_000, 10_000)  # RSS is read when this many answers have arrived


@dataclass
class LoadReport:
    clients: int
    seconds: float  # wall time of the whole run
    requests: int  # answers received (200 + 429 + unexpected)
    statuses: dict[str, int]  # HTTP status -> count ("error" for transport errors)
    throughput_rps: float
    p50_ms: float  # latency of the 200 answers
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_kib_at: dict[str, int] = field(default_factory=dict)  # answers so far -> server VmRSS (KiB)
    unexpected: list[str] = field(default_factory=list)  # the first few, for the failure message

    @property
    def rss_growth(self) -> float | None:
        """Relative RSS growth between the first and the last mark (None if a mark was not reached)."""
        marks = [str(m) for m in RSS_MARKS]
        if not all(m in self.rss_kib_at for m in marks):
            return None
        return self.rss_kib_at[marks[-1]] / self.rss_kib_at[marks[0]] - 1.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rss_growth": self.rss_growth}, indent=2)


def _request(rng: np.random.Generator, sampled: bool = True) -> tuple[dict, int]:
    """A random request body and the number of rows its answer must have; `sampled=False` sends top-k
    requests only (the share the mix would sample stays top-k JSON: for engines without "sample" mode)."""
    length = int(rng.integers(16, 97))
    start = length // 2
    body = {"model": MODEL, "sequences": [{"token_ids": rng.integers(0, VOCAB, size=length).tolist(), "start": start}],
            "top_k": 20}  # fmt: skip
    draw = rng.random()
    if draw < 0.15 and sampled:
        body |= {"mode": "sample", "samples": 32, "seed": int(rng.integers(0, 2**31))}
    elif draw < 0.40:
        body["format"] = "binary"
    return body, length - start


def _rows(response: httpx.Response, body: dict) -> int:
    if body.get("format") == "binary":
        from dualdistill.protocol import wire

        return wire.decode(response.content)[0].num_rows
    return len(response.json()["results"][0]["top_ids"])


class _Run:
    """Shared state of one load run (one event loop, so plain counters are safe)."""

    def __init__(self, clients: int, seconds: float, min_requests: int, max_seconds: float, pid: int | None):
        self.clients, self.seconds, self.min_requests, self.max_seconds, self.pid = (
            clients, seconds, min_requests, max_seconds, pid
        )  # fmt: skip
        self.began = time.monotonic()
        self.done = 0
        self.statuses: dict[str, int] = {}
        self.latencies: list[float] = []
        self.rss: dict[str, int] = {}
        self.unexpected: list[str] = []

    def more(self) -> bool:
        elapsed = time.monotonic() - self.began
        return elapsed < self.max_seconds and (elapsed < self.seconds or self.done < self.min_requests)

    def record(self, status: str, seconds: float | None, problem: str | None = None) -> None:
        self.done += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if seconds is not None:
            self.latencies.append(seconds)
        if problem is not None and len(self.unexpected) < 20:
            self.unexpected.append(problem)
        if self.pid is not None and self.done in RSS_MARKS:
            self.rss[str(self.done)] = rss_kib(self.pid)


async def _client(run: _Run, http: httpx.AsyncClient, url: str, seed: int, sampled: bool) -> None:
    rng = np.random.default_rng(seed)
    while run.more():
        body, rows = _request(rng, sampled)
        begin = time.perf_counter()
        try:
            response = await http.post(url, json=body)
        except httpx.HTTPError as exc:
            run.record("error", None, f"{type(exc).__name__}: {exc}")
            continue
        seconds = time.perf_counter() - begin
        if response.status_code == 200:
            got = _rows(response, body)
            run.record("200", seconds, None if got == rows else f"200 with {got} rows, expected {rows}")
        elif response.status_code == 429 and response.headers.get("retry-after", "").isdigit():
            run.record("429", None)
            await asyncio.sleep(float(response.headers["retry-after"]))
        else:
            run.record(str(response.status_code), None, f"{response.status_code}: {response.text[:200]}")


async def _run_load(http_url: str, run: _Run, seed: int, sampled: bool) -> None:
    # One connection pool per client: httpx's pool scans all its connections (a syscall each) for every
    # request, so one shared pool of 64 made this process, not the server, the bottleneck of the run.
    # (One TLS context for all: building one per client loads the CA bundle each time, seconds in all.)
    url = http_url + "/v1/logits"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = httpx.create_ssl_context()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0),
                                                                     verify=tls)) for _ in range(run.clients)]  # fmt: skip
        run.began = time.monotonic()  # the run starts when every client is ready
        await asyncio.gather(*(_client(run, http, url, seed * 1000 + i, sampled) for i, http in enumerate(clients)))


def run_load(
    http_url: str,
    *,
    clients: int,
    seconds: float,
    min_requests: int = 0,
    max_seconds: float = 600.0,
    pid: int | None = None,
    seed: int = 0,
    sampled: bool = True,
) -> LoadReport:
    """Run the load against a server at `http_url`; `pid` (the server's) enables the RSS marks; `sampled`:
    whether the mix holds sampled requests (see `_request`)."""
    from dualdistill.protocol.wire import kernels

    # This process's own stalls would count as the server's latency: the wire codec's first call would
    # compile (or load) its kernels while 64 answers wait, and with torch imported (the bench imports
    # it) a full garbage collection walks a million startup objects, about 300 ms for every client.
    kernels.warm_up()
    gc.collect()
    gc.freeze()
    run = _Run(clients, seconds, min_requests, max_seconds, pid)
    try:
        asyncio.run(_run_load(http_url, run, seed, sampled))
    finally:
        gc.unfreeze()
    wall = time.monotonic() - run.began
    ms = np.asarray(run.latencies) * 1000.0 if run.latencies else np.zeros(1)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    unexpected = sum(n for status, n in run.statuses.items() if status not in ("200", "429"))
    assert unexpected == 0 or run.unexpected, "every unexpected answer leaves a note"
    return LoadReport(
        clients=clients, seconds=round(wall, 2), requests=run.done, statuses=run.statuses,
        throughput_rps=round(run.done / wall, 1), p50_ms=round(p50, 2), p90_ms=round(p90, 2),
        p99_ms=round(p99, 2), max_ms=round(float(ms.max()), 2), rss_kib_at=run.rss, unexpected=run.unexpected,
    )  # fmt: skip


# The server of the standalone run and of the slow test: defaults, except that the result cache is off
# (a filling cache is growth by design and would hide a leak) and ports are free ones.
LOAD_SERVER_ARGS = ("--cache", "none", "--log-level", "warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--min-requests", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    from tests.fixtures.server_process import start_server
    from tests.fixtures.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        with start_server({MODEL: model_dir}, *LOAD_SERVER_ARGS, wire_kernels="auto") as server:
            report = run_load(
                server.http_url, clients=args.clients, seconds=args.seconds, min_requests=args.min_requests,
                max_seconds=args.max_seconds, pid=server.process.pid,
            )  # fmt: skip
    text = report.to_json()
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
