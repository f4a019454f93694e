"""The floor under a one-sequence call's added latency: the service's own HTTP and gRPC stacks and its wire
codec, without the service.

    python bench/transport_floor.py [--reps R]

`serve` (a child process) runs what the teacher server runs around its service, and nothing else: an
ASGI app on uvicorn with the server's own settings (its guarded HTTP/1.1 protocol, a TCP_NODELAY
listening socket, no access log; a plain ASGI route, as the service serves POST /v1/logits past FastAPI's
router) and a grpc.aio server. They hold one answer's results, computed before
(a `.npz` of SequenceLogits arrays), and answer every call after reading it, without parsing it, a
model or a batcher, in two ways:
- "constant": the same payload bytes, encoded once at start (POST /v1/constant; GetLogits with model
  "constant"): the transports alone;
- "encoded": `wire.encode` of the results on every call, on the event loop as the service encodes a
  small answer (POST /v1/logits; GetLogits with any other model), and our client decodes every answer
  (`wire.decode`): the transports and the codec, in place (a codec call right after the network's is
  slower than the same call repeated alone).

`measure` times both with the clients the service bench times: our blocking client's HTTP connections
(client/plain_http.py, one kept alive), a
gRPC stub on one channel, and curl sending every request of one invocation on one connection
(bench/service_cost.py; curl does not decode). No service on these transports and this codec answers
faster than "encoded"; service_overhead.py reads the service's added latency against it: what is left is
the service's own per-call work (validation, the hand-off to the model's thread and back, post-processing
beyond the anchor's, metrics and logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import post_json, source_pythonpath, summarize

FIELDS = ("row_lengths", "top_ids", "top_logprobs", "token_logprobs", "tail_logprobs")


def save_results(results: list, path: Path) -> None:
    """One answer's `SequenceLogits` ("topk" mode) as a .npz the floor server loads."""
    np.savez(path, **{f"{i}_{name}": getattr(r, name) for i, r in enumerate(results) for name in FIELDS})


def load_results(path: Path) -> list:
    from dualdistill.protocol.results import SequenceLogits

    with np.load(path) as data:
        count = len({key.split("_", 1)[0] for key in data.files})
        return [SequenceLogits(**{name: data[f"{i}_{name}"] for name in FIELDS}) for i in range(count)]


def serve(results_path: Path) -> None:
    """The floor server (blocks): prints "ports HTTP GRPC" once both listen."""
    import grpc
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response

    from dualdistill.protocol import wire
    from dualdistill.protocol.formats import BINARY_CONTENT_TYPE
    from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc
    from dualdistill_server.config import ServerConfig
    from dualdistill_server.http.connections import guarded_protocol
    from dualdistill_server.main import _bind

    results = load_results(results_path)
    constant = wire.encode(results)
    config = ServerConfig()

    async def app(scope, receive, send) -> None:  # POST /v1/constant or /v1/logits (uvicorn: HTTP only)
        await Request(scope, receive).body()
        payload = constant if scope["path"] == "/v1/constant" else wire.encode(results)
        await Response(payload, media_type=BINARY_CONTENT_TYPE)(scope, receive, send)

    class Teacher(teacher_pb2_grpc.TeacherServicer):
        async def GetLogits(self, request, context):  # noqa: N802 - the proto's name
            payload = constant if request.model == "constant" else wire.encode(results)
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


def measure(results: list, body: dict, reps: int) -> dict[str, list[float]]:
    """{"CLIENT KIND": [ms per call]} (CLIENT http, grpc or curl; KIND constant or encoded) against a floor
    server holding `results`; `body` is the JSON request the clients send (the service's own for this answer)."""
    from bench.service_cost import curl_seconds

    env = {**os.environ, "PYTHONPATH": source_pythonpath()}
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        results_path = Path(tmp) / "results.npz"
        save_results(results, results_path)
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--results",
                                  str(results_path)], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        try:
            line = child.stdout.readline().split()
            if not line or line[0] != "ports":
                raise RuntimeError(f"the floor server did not start (exit code {child.poll()})")
            url, target = f"http://127.0.0.1:{line[1]}", f"127.0.0.1:{line[2]}"
            out = _time_clients(url, target, body, reps)
            raw = json.dumps(body).encode()
            for kind, route in (("constant", "/v1/constant"), ("encoded", "/v1/logits")):
                out[f"curl {kind}"] = [s * 1e3 for s in curl_seconds(url + route, raw, reps + 1)[1:]]
            return out
        finally:
            child.terminate()
            child.wait(timeout=30)


def _time_clients(url: str, target: str, body: dict, reps: int) -> dict[str, list[float]]:
    """HTTP and gRPC calls of both kinds, interleaved; the encoded answers decoded as our client does."""
    import grpc
    import httpx

    from dualdistill.client.plain_http import PlainHttpConnections
    from dualdistill.protocol import wire
    from dualdistill.protocol.v1 import teacher_pb2, teacher_pb2_grpc

    sequences = [teacher_pb2.Sequence(**s) for s in body["sequences"]]
    fields = {"sequences": sequences, "top_k": body["top_k"], "format": body["format"]}
    requests = {kind: teacher_pb2.LogitsRequest(model=model, **fields)
                for kind, model in (("constant", "constant"), ("encoded", body["model"]))}  # fmt: skip
    out: dict[str, list[float]] = {}
    parsed = httpx.URL(url)
    http = PlainHttpConnections(parsed.host, parsed.port)
    raw = json.dumps(body).encode()
    with grpc.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)

        def http_call(route: str) -> bytes:
            return post_json(http, route, raw)[1]

        calls = {
            "http constant": lambda: http_call("/v1/constant"),
            "http encoded": lambda: wire.decode(http_call("/v1/logits")),
            "grpc constant": lambda: stub.GetLogits(requests["constant"], timeout=60),
            "grpc encoded": lambda: wire.decode(stub.GetLogits(requests["encoded"], timeout=60).payload),
        }
        for rep in range(reps + 1):  # rep 0 warms up
            for path, call in calls.items():
                begin = time.perf_counter()
                call()
                if rep:
                    out.setdefault(path, []).append((time.perf_counter() - begin) * 1e3)
    http.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--results", type=Path, help="serve: the .npz of the answer's results")
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.results)
        return
    from bench.wire_encode_speed import tiny_vocab_response

    rng = np.random.default_rng(0)
    body = {"model": "floor", "sequences": [{"token_ids": rng.integers(0, 320, 64).tolist(), "start": 8}],
            "top_k": 128, "format": "binary"}  # fmt: skip
    for path, ms in measure(tiny_vocab_response()[:1], body, args.reps).items():
        print(f"{path}: {summarize(ms).median:.2f} ms per call (median of {len(ms)})")


if __name__ == "__main__":
    main()
