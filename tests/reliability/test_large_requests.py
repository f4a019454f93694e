"""One large request must not stall the other tenants (issue 18, item 1).

A real server process with the default limits on request size (32 MiB bodies, 8 MiB gRPC requests,
262,144 queued tokens). While one client sends a large request, a probe thread measures `/healthz` on
a kept-alive connection every few milliseconds; the slowest probe must stay within PROBE_BUDGET_S of
the slowest probe of a quiet second just before (on a shared machine the scheduler alone delays a
probe by tens of milliseconds now and then; that is not the request's doing). The payloads are moderate (about 10-20 MB, a few seconds of conversion before the
fix) so the test runs in seconds; the cost was linear in the size, so larger ones stalled longer.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import grpc
import numpy as np
import pytest

from dualdistill.protocol.v1 import teacher_pb2 as pb
from tests.conftest import TINY_MODEL_NAME
from tests.fixtures.server_process import start_server
from tests.reliability.support import rss_kib

PROBE_BUDGET_S = 0.050  # the bound on the delay of another tenant's small request
MEMORY_SLACK_KIB = 64 * 1024


class HealthProbe:
    """/healthz in a loop on one kept-alive connection; `worst` is the slowest answer seen."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _probe(self) -> float:
        begin = time.perf_counter()
        self.connection.request("GET", "/healthz")
        response = self.connection.getresponse()
        response.read()
        assert response.status == 200
        return time.perf_counter() - begin

    def _run(self) -> None:
        while not self._stop.is_set():
            self.latencies.append(self._probe())
            time.sleep(0.005)

    def baseline(self, seconds: float = 1.0) -> float:
        """The slowest probe of a quiet period (same pacing as during the measurement)."""
        worst, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            worst = max(worst, self._probe())
            time.sleep(0.005)
        return worst

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.connection.close()

    @property
    def worst(self) -> float:
        return max(self.latencies)


@pytest.fixture(scope="module")
def big_limits_server(tiny_model_dir):
    # The defaults of ServerConfig for the size limits (not the shared server's 200 kB): what a user gets.
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, "--max-seq-len", "256", "--log-level", "warning") as server:
        yield server


@pytest.fixture(scope="module")
def wide_receive_server(tiny_model_dir):
    """A server whose operator raised the gRPC request limit to 64 MiB: then our own bounds meet messages
    larger than max_body_bytes."""
    with start_server({TINY_MODEL_NAME: tiny_model_dir}, "--max-seq-len", "256", "--log-level", "warning",
                      "--max-receive-message-bytes", str(64 * 2**20)) as server:
        yield server


_RNG = np.random.default_rng(0)


def _ids(n: int, high: int = 320) -> list[int]:
    return _RNG.integers(0, high, size=n).tolist()


def _once(server, send) -> tuple[float, float, object]:
    probe = HealthProbe(server.http_address)
    baseline = probe.baseline()
    with probe:
        time.sleep(0.05)
        outcome = send()
        time.sleep(0.05)
    return baseline, probe.worst, outcome


def _during(server, send, attempts: int = 3) -> tuple[float, float, object]:
    """(quiet worst, worst while `send` runs, its outcome): the best of `attempts` tries. Before the fix
    the stall was deterministic (1.2 s for the gRPC case); a retry only skips a scheduler hiccup of a
    shared machine, it cannot hide a blocked event loop."""
    best = None
    for _ in range(attempts):
        baseline, worst, outcome = _once(server, send)
        if best is None or worst - baseline < best[1] - best[0]:
            best = (baseline, worst, outcome)
        if worst - baseline < PROBE_BUDGET_S:
            break
    return best


def _json_post(server, path: str, body: bytes):
    """A send() for `_during`: POST the serialized `body`; returns (status, JSON answer, seconds)."""
    host, port = server.http_address.rsplit(":", 1)

    def send():
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        begin = time.perf_counter()
        connection.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, answer, time.perf_counter() - begin

    return send


def _grpc_refused(server, method: str, payload: bytes) -> tuple[float, float, tuple[grpc.RpcError, float]]:
    """`_during` a raw Teacher call that must fail: (quiet worst, worst, (its RpcError, seconds))."""
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary(f"/dualdistill.v1.Teacher/{method}", request_serializer=None,
                                   response_deserializer=None)

        def send():
            begin = time.perf_counter()
            with pytest.raises(grpc.RpcError) as raised:
                call(payload, timeout=60)
            return raised.value, time.perf_counter() - begin

        return _during(server, send)


def test_a_large_grpc_message_does_not_stall_health(big_limits_server) -> None:
    server = big_limits_server
    message = pb.LogitsRequest(model=TINY_MODEL_NAME, sequences=[pb.Sequence(token_ids=_ids(1_600_000, 2**31 - 1), start=1)])
    # Serialized up front and sent raw: serializing 8 MB in this process would hold its GIL and delay
    # the probe thread here, not the server.
    payload = message.SerializeToString()
    assert 7 * 2**20 < len(payload) < 8 * 2**20  # just under the default request limit: our checks refuse it
    before = rss_kib(server.process.pid)
    baseline, worst, (error, seconds) = _grpc_refused(server, "GetLogits", payload)
    assert worst - baseline < PROBE_BUDGET_S, (baseline, worst, seconds)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert rss_kib(server.process.pid) - before < MEMORY_SLACK_KIB, server.log_tail()
    print(json.dumps({"grpc_bytes": message.ByteSize(), "refused_s": round(seconds, 3),
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))


def test_a_large_json_body_does_not_stall_health(big_limits_server) -> None:
    server = big_limits_server
    body = json.dumps({"model": TINY_MODEL_NAME, "sequences": [{"token_ids": _ids(4_000_000), "start": 1}]}).encode()
    before = rss_kib(server.process.pid)
    baseline, worst, (status, answer, seconds) = _during(server, _json_post(server, "/v1/logits", body))
    assert worst - baseline < PROBE_BUDGET_S, (baseline, worst, seconds)
    assert status == 422 and answer["error"]["field"] == "sequences", answer  # refused before the parse
    assert rss_kib(server.process.pid) - before < MEMORY_SLACK_KIB, server.log_tail()
    print(json.dumps({"json_bytes": len(body), "refused_s": round(seconds, 3),
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))


def test_a_grpc_message_over_the_request_limit_is_refused_by_grpc_without_stalling(big_limits_server) -> None:
    """34.5 MB (over max_receive_message_bytes, 8 MiB by default) is refused by grpc before its bytes reach
    Python, so nobody waits on it. (With the request limit at the old 256 MiB, grpc's copy of such a message
    onto the event loop delayed /healthz by 54-169 ms.)"""
    server = big_limits_server
    message = pb.GenerateRequest(model=TINY_MODEL_NAME, prompts=[pb.Prompt(text="ab " * 11_500_000)])
    payload = message.SerializeToString()
    before = rss_kib(server.process.pid)
    baseline, worst, (error, seconds) = _grpc_refused(server, "Generate", payload)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    assert worst - baseline < PROBE_BUDGET_S, (baseline, worst, seconds)
    assert rss_kib(server.process.pid) - before < MEMORY_SLACK_KIB, server.log_tail()
    print(json.dumps({"grpc_bytes": len(payload), "refused_s": round(seconds, 3),
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))


def test_a_generate_message_over_the_body_bound_is_refused_before_it_is_parsed(wide_receive_server) -> None:
    """With the request limit raised above max_body_bytes (32 MiB), a Generate message over max_body_bytes
    is refused from its size alone, naming `prompts`: its text never reaches the parser or the tokenizer
    (before the bound, 15 MB of prompt text held the tokenizer past a 60 s deadline). /healthz is measured
    and printed, not bounded: an operator who raises the limit accepts grpc's copy of such messages on the
    event loop (docs/reliability.md)."""
    server = wide_receive_server
    message = pb.GenerateRequest(model=TINY_MODEL_NAME, prompts=[pb.Prompt(text="ab " * 11_500_000)])
    payload = message.SerializeToString()  # 34.5 MB, sent raw (see above)
    assert 32 * 2**20 < len(payload) < 64 * 2**20
    before = rss_kib(server.process.pid)
    baseline, worst, (error, seconds) = _grpc_refused(server, "Generate", payload)
    field = dict(error.trailing_metadata() or ()).get("x-dualdistill-field")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field == "prompts", (error.code(), error.details())
    assert f"{len(payload)} bytes" in error.details() and "max_body_bytes" in error.details(), error.details()
    assert seconds < 5.0, seconds  # the transfer of 34.5 MB over loopback, not a tokenization
    # Memory is printed, not bounded: over the default request limit grpc refuses such a message without
    # copying it (bounded in the test above); raising the limit lets grpc copy it into this process first,
    # and the allocator may keep those pages (81 MiB once measured on a fresh server).
    grown_kib = rss_kib(server.process.pid) - before
    print(json.dumps({"grpc_bytes": len(payload), "refused_s": round(seconds, 3), "rss_growth_mib": grown_kib // 1024,
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))


def test_prompt_text_that_cannot_fit_is_refused_before_it_is_tokenized(big_limits_server) -> None:
    """15 MB of prompt text (an allowed body size) cannot fit 256 tokens of at most 13 characters each: refused
    from its length, naming the field, without tokenizing it (before: no answer within 60 s, /healthz held
    for seconds)."""
    server = big_limits_server
    body = json.dumps({"model": TINY_MODEL_NAME, "prompts": [{"text": "ab " * 5_000_000}], "max_new_tokens": 1}).encode()
    baseline, worst, (status, answer, seconds) = _during(server, _json_post(server, "/v1/generate", body))
    assert status == 422 and answer["error"]["field"] == "prompts[0].text", answer
    assert "15000000 characters" in answer["error"]["message"], answer
    assert worst - baseline < PROBE_BUDGET_S, (baseline, worst, seconds)
    print(json.dumps({"json_bytes": len(body), "refused_s": round(seconds, 3),
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))


@pytest.mark.slow
def test_an_admissible_large_request_is_converted_off_the_loop(big_limits_server) -> None:
    """Just under max_queue_tokens in one request is answered; nobody else waits on its conversion.
    (mode sample with 1 draw keeps the answer small: the forward, not the encoding, is the cost.)"""
    server = big_limits_server
    sequences = [pb.Sequence(token_ids=_ids(256), start=255) for _ in range(1000)]  # 256,000 tokens
    message = pb.LogitsRequest(model=TINY_MODEL_NAME, sequences=sequences, mode="sample", samples=1, format="binary")
    payload = message.SerializeToString()
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/dualdistill.v1.Teacher/GetLogits", request_serializer=None,
                                   response_deserializer=None)

        def send():
            begin = time.perf_counter()
            response = pb.LogitsResponse.FromString(call(payload, timeout=120))
            return response, time.perf_counter() - begin

        baseline, worst, (response, seconds) = _during(server, send, attempts=2)
    assert response.payload
    print(json.dumps({"tokens": 256_000, "answered_s": round(seconds, 3),
                      "healthz_quiet_worst_ms": round(baseline * 1e3, 1), "healthz_worst_ms": round(worst * 1e3, 1)}))
    assert worst - baseline < PROBE_BUDGET_S, (baseline, worst, seconds)
