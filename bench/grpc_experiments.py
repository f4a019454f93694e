"""gRPC core's I/O paths side by side: what GRPC_EXPERIMENTS does to a unary call's latency, on both ends.

    python bench/grpc_experiments.py [--calls 1500] [--server=-event_engine_listener] [--client=-event_engine_client]

Two grpc.aio servers answer GetLogits with a fixed 7 KB payload (a one-sequence answer's size), one with
grpc's defaults and one started with GRPC_EXPERIMENTS=<--server> (what `dualdistill serve` sets,
server/dualdistill_server/grpc_core.py); two client processes (blocking stubs, a 60 s deadline and a
request id in the metadata, as TeacherClient sends) run with grpc's defaults and with
GRPC_EXPERIMENTS=<--client>. (The `dualdistill` command sets both parts: client/dualdistill/cli/grpc_core.py.)
grpc reads the variable once, when it is imported, so each setting is a
process of its own. Every round makes one call per (client, server) pair in a random order, each after
~1 ms of CPU work in the calling process (a trainer's step between calls), and the differences are
paired round by round. Prints the four medians and the paired differences with bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import ROOT, markdown_table

PAYLOAD_BYTES = 7000

CLIENT = r"""
import sys, time
import grpc
from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc
stubs = [teacher_pb2_grpc.TeacherStub(grpc.insecure_channel(target)) for target in sys.argv[1:]]
request = teacher_pb2.LogitsRequest(model="constant")
metadata = (("x-request-id", "0123456789abcdef0123456789abcdef"),)
for line in sys.stdin:
    stub = stubs[int(line)]
    sum(range(30_000))  # the caller's own work between calls
    begin = time.perf_counter()
    stub.GetLogits(request, timeout=60, metadata=metadata)
    print(time.perf_counter() - begin, flush=True)
"""


def serve() -> None:
    """A floor server (blocks): prints its port, answers every GetLogits with the same payload."""
    import grpc

    from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc

    payload = os.urandom(PAYLOAD_BYTES)

    class Teacher(teacher_pb2_grpc.TeacherServicer):
        async def GetLogits(self, request, context):  # noqa: N802 - the proto's name
            return teacher_pb2.LogitsResponse(payload=payload)

    async def main() -> None:
        server = grpc.aio.server()
        teacher_pb2_grpc.add_TeacherServicer_to_server(Teacher(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def _environ(experiments: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("client", "server", "."))
    if experiments:
        env["GRPC_EXPERIMENTS"] = experiments
    return env


def measure(calls: int, server_experiments: str, client_experiments: str) -> dict[tuple[str, str], list[float]]:
    """{(client, server): [ms per call]}, paired by index (one round = one call of each pair)."""
    servers = {name: subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True,
                                      env=_environ(experiments))
               for name, experiments in (("default", None), ("experiments", server_experiments))}  # fmt: skip
    clients: dict[str, subprocess.Popen] = {}
    try:
        targets = [f"127.0.0.1:{int(servers[name].stdout.readline())}" for name in ("default", "experiments")]
        for name, experiments in (("default", None), ("experiments", client_experiments)):
            clients[name] = subprocess.Popen([sys.executable, "-c", CLIENT, *targets], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, env=_environ(experiments))  # fmt: skip
        pairs = [(client, server) for client in clients for server in ("default", "experiments")]
        out: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        rng = np.random.default_rng(0)
        for index in range(calls + 100):  # the first 100 rounds warm up
            for client, server in [pairs[i] for i in rng.permutation(len(pairs))]:
                clients[client].stdin.write(f"{0 if server == 'default' else 1}\n")
                clients[client].stdin.flush()
                took = float(clients[client].stdout.readline())
                if index >= 100:
                    out[client, server].append(took * 1e3)
        return out
    finally:
        for process in [*clients.values(), *servers.values()]:
            process.kill()
            process.wait()


def _paired(a: list[float], b: list[float], rng: np.random.Generator) -> str:
    diff = np.array(a) - np.array(b)
    boot = np.median(rng.choice(diff, (1000, len(diff))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return f"{np.median(diff):+.3f} [{low:+.3f}, {high:+.3f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="rounds (one call per client and server each)")
    parser.add_argument("--server", default="-event_engine_listener", help="the servers' GRPC_EXPERIMENTS")
    parser.add_argument("--client", default="-event_engine_client",
                        help="the clients' GRPC_EXPERIMENTS")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    times = measure(args.calls, args.server, args.client)
    rng = np.random.default_rng(1)
    rows = [[client, server, f"{np.median(v):.3f}"] for (client, server), v in times.items()]
    print(f"Unary GetLogits of a fixed {PAYLOAD_BYTES} B answer, {args.calls} rounds, ms per call (median); "
          f"server experiments {args.server!r}, client experiments {args.client!r}:\n")
    print(markdown_table(["client", "server", "ms per call"], rows))
    print("\nPaired differences, ms: median [95% interval]:\n")
    print(markdown_table(["change", "ms"], [
        ["server experiments, default client", _paired(times["default", "experiments"], times["default", "default"], rng)],
        ["server experiments, experiments client",
         _paired(times["experiments", "experiments"], times["experiments", "default"], rng)],
        ["client experiments, default server", _paired(times["experiments", "default"], times["default", "default"], rng)],
        ["both, against neither", _paired(times["experiments", "experiments"], times["default", "default"], rng)],
    ]))  # fmt: skip
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
