"""The floor under a one-sequence call's added latency: the service's own HTTP and gRPC stacks answering a
constant payload, and the wire codec's encode + decode of one sequence's answer.

    python bench/transport_floor.py [--payload-bytes N] [--reps R]

`serve` (a child process) runs what the teacher server runs around its service, and nothing else: a
FastAPI app on uvicorn with the server's own settings (its guarded HTTP/1.1 protocol, a TCP_NODELAY
listening socket, no access log) and a grpc.aio server, each answering POST /v1/logits and
Teacher.GetLogits with the same `--payload-bytes` random bytes after reading the request (no parse of it,
no model, no batcher, no encoding). `measure` times, from this process, the clients the service bench
times: httpx on one kept-alive connection, a gRPC stub (the channel our client uses), and curl sending
every request of one invocation on one connection (bench/service_cost.py). The codec's share is timed
in-process on a real answer (`codec_ms`): `wire.encode` (the server's side) and `wire.decode` (our
client's side), thread CPU, medians.

No service can answer a call faster than its transports plus its encoding, so service_overhead.py reads
its added latency against floor + codec; what is left is the service's own per-call work (validation,
the batcher's hand-off to the model thread and back, post-processing beyond the anchor's, metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the handler's annotation in these globals

from bench.common import ROOT, summarize

FLOOR_PATHS = ("httpx", "grpc", "curl")  # the clients: raw httpx, a gRPC stub, curl


def serve(payload_bytes: int) -> None:
    """The floor server (blocks): prints "ports HTTP GRPC" once both listen."""
    import grpc
    import uvicorn
    from fastapi import FastAPI
    from starlette.responses import Response

    from dualdistill.protocol.formats import BINARY_CONTENT_TYPE
    from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc
    from dualdistill_server.config import ServerConfig
    from dualdistill_server.http.connections import guarded_protocol
    from dualdistill_server.main import _bind

    payload = os.urandom(payload_bytes)
    config = ServerConfig()
    app = FastAPI()

    @app.post("/v1/logits")
    async def logits(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type=BINARY_CONTENT_TYPE)

    class Teacher(teacher_pb2_grpc.TeacherServicer):
        async def GetLogits(self, request, context):  # noqa: N802 - the proto's name
            return teacher_pb2.LogitsResponse(payload=payload)

    async def main() -> None:
        server = grpc.aio.server()
        teacher_pb2_grpc.add_TeacherServicer_to_server(Teacher(), server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sock = _bind("127.0.0.1", 0)
        http = uvicorn.Server(
            uvicorn.Config(
                app, log_config=None, access_log=False, lifespan="off", server_header=False,
                http=guarded_protocol(config.header_timeout_seconds, config.max_connections,
                                      config.body_timeout_seconds),
            )
        )  # fmt: skip
        serving = asyncio.create_task(http.serve(sockets=[sock]))
        while not http.started:
            await asyncio.sleep(0.01)
        print(f"ports {sock.getsockname()[1]} {grpc_port}", flush=True)
        await serving

    asyncio.run(main())


def measure(payload_bytes: int, body: dict, reps: int) -> dict[str, list[float]]:
    """{path: [ms per call]} against a floor server answering `payload_bytes`; `body` is the JSON request."""
    import grpc
    import httpx

    from bench.service_cost import curl_seconds
    from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("client", "server", "."))}
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--payload-bytes",
                              str(payload_bytes)], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        line = child.stdout.readline().split()
        if not line or line[0] != "ports":
            raise RuntimeError(f"the floor server did not start (exit code {child.poll()})")
        http_port, grpc_port = int(line[1]), int(line[2])
        url = f"http://127.0.0.1:{http_port}"
        request = teacher_pb2.LogitsRequest(
            model=body["model"], sequences=[teacher_pb2.Sequence(**s) for s in body["sequences"]],
            top_k=body["top_k"], format=body["format"],
        )  # fmt: skip
        out: dict[str, list[float]] = {"httpx": [], "grpc": []}
        with httpx.Client(base_url=url, timeout=60) as http, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)
            calls = {"httpx": lambda: http.post("/v1/logits", json=body).raise_for_status(),
                     "grpc": lambda: stub.GetLogits(request, timeout=60)}  # fmt: skip
            for rep in range(reps + 1):  # rep 0 warms up
                for path, call in calls.items():
                    begin = time.perf_counter()
                    call()
                    if rep:
                        out[path].append((time.perf_counter() - begin) * 1e3)
        out["curl"] = [s * 1e3 for s in curl_seconds(url + "/v1/logits", json.dumps(body).encode(), reps + 1)[1:]]
        return out
    finally:
        child.terminate()
        child.wait(timeout=30)


def codec_ms(results: list, reps: int = 200) -> dict[str, list[float]]:
    """{"encode": [...], "decode": [...]} thread-CPU ms of this answer's binary encoding and decoding."""
    from dualdistill.protocol import wire

    payload = wire.encode(results)
    out: dict[str, list[float]] = {"encode": [], "decode": []}
    for rep in range(reps + 10):  # 10 warm-ups
        for name, call in (("encode", lambda: wire.encode(results)), ("decode", lambda: wire.decode(payload))):
            begin = time.thread_time()
            call()
            if rep >= 10:
                out[name].append((time.thread_time() - begin) * 1e3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--payload-bytes", type=int, default=9503, help="the answer's size (one sequence, k = 128)")
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.payload_bytes)
        return
    rng = np.random.default_rng(0)
    body = {"model": "floor", "sequences": [{"token_ids": rng.integers(0, 320, 64).tolist(), "start": 8}],
            "top_k": 128, "format": "binary"}  # fmt: skip
    for path, ms in measure(args.payload_bytes, body, args.reps).items():
        print(f"{path}: {summarize(ms).median:.2f} ms per call (median of {len(ms)})")


if __name__ == "__main__":
    main()
