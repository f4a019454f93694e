"""SIGTERM under concurrent load on both transports (vLLM's shutdown test / Triton's L0_lifecycle shape).

Twelve client threads (six HTTP, six gRPC) send requests in closed loops against a server whose 1 s
batching window keeps every request queued for a while. SIGTERM arrives mid-load. Then:
- every request that was in flight when the signal came completes with 200 / OK (the drain);
- requests that arrive during the drain get 503 + Retry-After / UNAVAILABLE, none is served;
- after the drain the listeners close (connection refused), the process exits 0 within drain_seconds;
- nothing else: no 5xx, no other gRPC code, no hang, no response cut in half.

Where the other fault promises are proven (not repeated here): tests/server/test_service_lifecycle.py
(one request per transport through a drain, readiness/health states), tests/client/trainer/test_retry.py
(teacher SIGKILLed mid-training and restarted: retries, every pair used exactly once in the epoch),
tests/client/trainer/test_resume.py (a `dualdistill train` process SIGKILLed and resumed: the same
weights, losses and data order as an uninterrupted run), tests/client/test_client_restart.py.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass

import grpc
import httpx

from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from tests.conftest import TINY_MODEL_NAME
from tests.fixtures.server_process import start_server

WINDOW_MS = 1000  # batching window: a request sent before the signal is still queued when it lands
DRAIN_SECONDS = 20
INTO_WINDOW = 0.4  # s: SIGTERM lands this far into a batching window, so the drain lasts about 0.6 s
IN_FLIGHT_MARGIN = 0.2  # s: started this long before SIGTERM = surely admitted before it
REFUSED_MARGIN = 0.5  # s: started this long after SIGTERM = surely seen by a draining server
VOCAB = 320  # the tiny model's


def _token_ids(rng: random.Random) -> list[int]:
    """Fresh ids for every request: no result cache or in-flight deduplication can short-cut the queue."""
    return [rng.randrange(VOCAB) for _ in range(5)]


@dataclass
class Attempt:
    transport: str
    began: float
    ended: float
    outcome: str  # "200", "503", "OK", "UNAVAILABLE", "refused", "disconnected", or anything unexpected
    details: str = ""


def _back_off(outcome: str, retry_after: str | None) -> None:
    """What a well-behaved client does (TeacherClient does): wait at least the server's Retry-After."""
    if retry_after is not None:
        time.sleep(float(retry_after))
    elif outcome not in ("200", "OK"):
        time.sleep(0.05)


def _http_worker(url: str, stop: threading.Event, out: list[Attempt], seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            body = {"model": TINY_MODEL_NAME, "sequences": [{"token_ids": _token_ids(rng), "start": 2}]}
            began, retry_after = time.monotonic(), None
            try:
                response = client.post(url + "/v1/logits", json=body)
                outcome = str(response.status_code)
                retry_after = response.headers.get("retry-after") if response.status_code == 503 else None
                if response.status_code == 200 and len(response.json()["results"][0]["top_ids"]) != 3:
                    outcome = "200-wrong-rows"
                if response.status_code == 503 and not response.headers.get("retry-after"):
                    outcome = "503-without-retry-after"
            except httpx.ConnectError:
                outcome = "refused"
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # A keep-alive connection closed by the stopping server as a request was sent on it:
                # no response at all, which HTTP/1.1 clients retry. Allowed only for requests sent after
                # the signal (checked below): one in flight before it must get its answer.
                outcome = "disconnected"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            out.append(Attempt("http", began, time.monotonic(), outcome))
            _back_off(outcome, retry_after)


def _grpc_worker(target: str, stop: threading.Event, out: list[Attempt], seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        while not stop.is_set():
            sequence = pb.Sequence(token_ids=_token_ids(rng), start=2)
            began, details, retry_after = time.monotonic(), "", None
            try:
                reply = stub.GetLogits(pb.LogitsRequest(model=TINY_MODEL_NAME, sequences=[sequence]), timeout=60)
                outcome = "OK" if len(reply.results[0].row_lengths) == 3 else "OK-wrong-rows"
            except grpc.RpcError as error:
                outcome, details = error.code().name, error.details() or ""
                retry_after = dict(error.trailing_metadata() or ()).get("retry-after")
            out.append(Attempt("grpc", began, time.monotonic(), outcome, details))
            _back_off(outcome, retry_after)


def _probe_while_draining(server) -> tuple[httpx.Response, grpc.RpcError | None]:
    """One new request per transport while the queued ones are still being drained."""
    body = {"model": TINY_MODEL_NAME, "sequences": [{"token_ids": [7, 7, 7, 7], "start": 1}]}
    response = httpx.post(server.http_url + "/v1/logits", json=body, timeout=30)
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = pb.LogitsRequest(model=TINY_MODEL_NAME, sequences=[pb.Sequence(token_ids=[7, 7, 7, 7], start=1)])
        try:
            teacher_pb2_grpc.TeacherStub(channel).GetLogits(request, timeout=30)
        except grpc.RpcError as error:
            return response, error
    return response, None


def test_sigterm_under_load_finishes_in_flight_work_and_refuses_new_work(tiny_model_dir) -> None:
    args = ("--max-wait-ms", str(WINDOW_MS), "--drain-seconds", str(DRAIN_SECONDS), "--cache", "none")
    attempts: list[Attempt] = []
    stop = threading.Event()
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, *args) as server:
        workers = [threading.Thread(target=_http_worker, args=(server.http_url, stop, attempts, i)) for i in range(6)]
        workers += [threading.Thread(target=_grpc_worker, args=(server.grpc_target, stop, attempts, 10 + i))
                    for i in range(6)]  # fmt: skip
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while sum(a.outcome in ("200", "OK") for a in attempts) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(INTO_WINDOW)  # the workers' next requests are queued in a fresh window now
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        probes = _probe_while_draining(server)
        exit_code = server.wait(timeout=DRAIN_SECONDS + 30)
        exited = time.monotonic()
        time.sleep(0.5)  # let the clients meet the closed listeners
        stop.set()
        for worker in workers:
            worker.join(timeout=90)
        log = server.log_tail(60)

    summary = sorted((round(a.began - signalled, 2), round(a.ended - signalled, 2), a.transport, a.outcome, a.details)
                     for a in attempts if a.ended > signalled - 1.5)  # fmt: skip
    in_flight = [a for a in attempts if a.began < signalled - IN_FLIGHT_MARGIN and a.ended > signalled]
    late = [a for a in attempts if a.began > signalled + REFUSED_MARGIN]
    assert exit_code == 0, log
    assert exited - signalled < DRAIN_SECONDS, log
    assert not any(worker.is_alive() for worker in workers), "a client hung"
    assert not [a for a in attempts if a.outcome == "disconnected" and a.began < signalled], summary
    assert len(in_flight) >= 3, f"too few requests in flight at SIGTERM to mean anything: {summary}"
    assert all(a.outcome in ("200", "OK") for a in in_flight), summary
    assert not [a for a in late if a.outcome in ("200", "OK")], summary
    http_probe, grpc_probe = probes
    assert http_probe.status_code == 503 and http_probe.headers.get("retry-after"), http_probe.text
    assert http_probe.json()["error"]["code"] == "UNAVAILABLE"
    assert grpc_probe is not None and grpc_probe.code() == grpc.StatusCode.UNAVAILABLE, grpc_probe
    # Last, as it is the check that names the stray outcomes: a client must be able to tell "retry
    # elsewhere" (503 / UNAVAILABLE / refused) from everything else.
    allowed = {"200", "OK", "503", "UNAVAILABLE", "refused", "disconnected"}
    assert {a.outcome for a in attempts} <= allowed, [a for a in summary if a[3] not in allowed]
