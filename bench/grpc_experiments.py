"""gRPC core's I/O paths side by side: what GRPC_EXPERIMENTS does to a unary call's latency, on both ends.

    python bench/grpc_experiments.py [--quick] [--calls 1500] [--server=-event_engine_listener] [--client=-event_engine_client]

Two grpc.aio servers answer GetLogits with a fixed 7 KB payload (a one-sequence answer's size), one with
grpc's defaults and one started with GRPC_EXPERIMENTS=<--server>; two client processes (blocking stubs, a 60 s deadline and a
request id in the metadata, as TeacherClient sends) run with grpc's defaults and with
GRPC_EXPERIMENTS=<--client>. (The `dualdistill` command sets both parts: client/dualdistill/cli/grpc_core.py.)
grpc reads the variable once, when it is imported, so each setting is a
process of its own. Every round makes one call per (client, server) pair in a random order, each after
~1 ms of CPU work in the calling process (a trainer's step between calls), and the differences are
paired round by round. Writes bench/results/grpc_experiments.md/.json: the four medians and the paired
differences with bootstrap 95% intervals.
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

from bench.common import (
    Section,
    add_output_args,
    command_line,
    header,
    machine_info,
    markdown_table,
    paired_difference,
    plain_args,
    section_main,
    source_pythonpath,
)

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
    env["PYTHONPATH"] = source_pythonpath()
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


COMPARISONS = [  # (label, (client, server) with the change, (client, server) without it)
    ("server experiments, default client", ("default", "experiments"), ("default", "default")),
    ("server experiments, experiments client", ("experiments", "experiments"), ("experiments", "default")),
    ("client experiments, default server", ("experiments", "default"), ("default", "default")),
    ("both, against neither", ("experiments", "experiments"), ("default", "default")),
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 rounds")
    parser.add_argument("--calls", type=int, default=None, help="rounds (one call per client and server each; default 1500)")
    parser.add_argument("--server", default="-event_engine_listener", help="the servers' GRPC_EXPERIMENTS")
    parser.add_argument("--client", default="-event_engine_client", help="the clients' GRPC_EXPERIMENTS")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_output_args(parser)
    args = parser.parse_args(argv)
    args.calls = args.calls or (300 if args.quick else 1500)
    return args


def run(argv: list[str]) -> Section:
    args = parse(argv)
    info = machine_info()
    times = measure(args.calls, args.server, args.client)
    data = {"machine": info, "argv": argv, "args": plain_args(args), "load_average": os.getloadavg()[0],
            "medians": {f"{client}/{server}": float(np.median(v)) for (client, server), v in times.items()},
            "paired": {label: paired_difference(times[a], times[b]) for label, a, b in COMPARISONS}}  # fmt: skip
    return section(data, args, argv)


def section(data: dict, args: argparse.Namespace, argv: list[str]) -> Section:
    rows = [[*key.split("/"), f"{value:.3f}"] for key, value in data["medians"].items()]
    paired = [[label, f"{d['median']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"] for label, d in data["paired"].items()]
    md = "\n".join([
        header("gRPC I/O paths (GRPC_EXPERIMENTS)", command_line("bench/grpc_experiments.py", argv), data["machine"]),
        f"Unary GetLogits of a fixed {PAYLOAD_BYTES} B answer (a one-sequence answer's size) from a grpc.aio server, "
        f"blocking stubs with a deadline and a request id, {args.calls} rounds of one call per client and server in a "
        f"random order, each after ~1 ms of the caller's own CPU work. \"experiments\": server "
        f"GRPC_EXPERIMENTS={args.server}, client GRPC_EXPERIMENTS={args.client} (what the `dualdistill` command "
        "sets: client/dualdistill/cli/grpc_core.py); \"default\": grpc's own I/O path. Median ms per call:\n",
        markdown_table(["client", "server", "ms per call"], rows),
        "\nPaired differences, ms, median [95% interval, bootstrap over rounds]:\n",
        markdown_table(["change", "ms"], paired),
        f"\n1-minute load average at the end: {data['load_average']:.1f} on {data['machine']['cores']} cores.",
    ])
    return Section("grpc_experiments", "gRPC I/O paths", md, data)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve" in argv:
        serve()
        return
    section_main(argv, parse, run, section)


if __name__ == "__main__":
    main()
