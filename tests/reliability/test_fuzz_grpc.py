"""Random, truncated and bit-flipped protobuf bytes to every gRPC method (Triton's L0_grpc fuzz shape).

Through a raw channel with identity (de)serializers the server receives exactly the bytes sent. Every
Teacher method must answer with a status a client can act on — OK (the bytes happened to parse into a
valid request), INVALID_ARGUMENT, or NOT_FOUND (they parsed into an unknown model name) — with no
internals in the message, never INTERNAL or UNKNOWN, never a hang; and the server serves afterwards.
"""

from __future__ import annotations

import collections

import grpc
import httpx
import numpy as np
import pytest

from dualdistill.protocol.v1 import teacher_pb2 as pb
from tests.reliability.support import (
    HEALTH_CHECK,
    STREAM_METHOD,
    UNARY_METHODS,
    Outcome,
    leaks_internals,
    raw_stream,
    raw_unary,
)

ACCEPTABLE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
VALID = {
    "ListModels": pb.ListModelsRequest(),
    "GetLogits": pb.LogitsRequest(
        model="tiny", sequences=[pb.Sequence(token_ids=[5, 6, 7, 8, 9], start=2)], top_k=4, format="binary"
    ),
    # Small generation limits: a mutation that still parses must stay cheap to serve.
    "Generate": pb.GenerateRequest(model="tiny", prompts=[pb.Prompt(token_ids=[5, 6, 7])], max_new_tokens=2),
    "StreamLogits": pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[1, 2, 3], start=1)]),
}


def corpus(valid: bytes, seed: int, n_random: int, n_flips: int) -> list[bytes]:
    """Random bytes of random lengths, every truncation of `valid`, and `valid` with 1-3 bytes changed."""
    rng = np.random.default_rng(seed)
    out = [rng.bytes(int(n)) for n in rng.integers(1, 300, size=n_random)]
    out += [valid[:cut] for cut in range(1, len(valid))]
    for _ in range(n_flips if valid else 0):
        mutated = bytearray(valid)
        for at in rng.integers(0, len(valid), size=int(rng.integers(1, 4))):
            mutated[at] ^= int(rng.integers(1, 256))
        out.append(bytes(mutated))
    return out


def _summary(outcomes: list[tuple[bytes, Outcome]]) -> str:
    codes = collections.Counter(outcome.code for _, outcome in outcomes)
    bad = [(payload[:40], o) for payload, o in outcomes if o.code not in ACCEPTABLE or leaks_internals(o.details)]
    return f"codes {dict(codes)}; first bad: {bad[:3]}"


def _assert_alive(server) -> None:
    assert httpx.get(server.http_url + "/readyz", timeout=30).status_code == 200, server.log_tail()
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert raw_unary(channel, UNARY_METHODS[0], b"").code == "OK"


@pytest.fixture(scope="module")
def channel(tiny_server):
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        yield channel


@pytest.mark.parametrize("method", UNARY_METHODS, ids=lambda m: m.rsplit("/", 1)[1])
def test_garbage_to_unary_methods_is_invalid_argument(tiny_server, channel, method) -> None:
    name = method.rsplit("/", 1)[1]
    payloads = corpus(VALID[name].SerializeToString(), seed=len(name), n_random=40, n_flips=30)
    outcomes = [(payload, raw_unary(channel, method, payload)) for payload in payloads]
    assert all(o.code in ACCEPTABLE and not leaks_internals(o.details) for _, o in outcomes), _summary(outcomes)
    assert any(o.code == "INVALID_ARGUMENT" for _, o in outcomes)  # the corpus did reach the validation
    _assert_alive(tiny_server)


def test_garbage_in_a_stream_aborts_it_with_invalid_argument(tiny_server, channel) -> None:
    valid = VALID["StreamLogits"].SerializeToString()
    outcomes = []
    for payload in corpus(valid, seed=7, n_random=25, n_flips=20):
        outcomes.append((payload, raw_stream(channel, [valid, payload, valid])))
    assert all(o.code in ACCEPTABLE and not leaks_internals(o.details) for _, o in outcomes), _summary(outcomes)
    _assert_alive(tiny_server)


def test_garbage_to_the_health_service_never_breaks_it(tiny_server, channel) -> None:
    """grpc's own health servicer: any status but INTERNAL, and health keeps answering SERVING."""
    outcomes = [(p, raw_unary(channel, HEALTH_CHECK, p)) for p in corpus(b"\n\x00", seed=3, n_random=30, n_flips=0)]
    assert not [o for _, o in outcomes if o.code == "INTERNAL"], _summary(outcomes)
    assert raw_unary(channel, HEALTH_CHECK, b"").code == "OK"
    _assert_alive(tiny_server)


@pytest.mark.slow
@pytest.mark.parametrize("method", [*UNARY_METHODS, STREAM_METHOD], ids=lambda m: m.rsplit("/", 1)[1])
def test_many_mutations_per_method(tiny_server, channel, method) -> None:
    """The long variant: 600+ payloads per method."""
    name = method.rsplit("/", 1)[1]
    valid = VALID[name].SerializeToString()
    payloads = corpus(valid, seed=1000 + len(name), n_random=300, n_flips=300)
    if method == STREAM_METHOD:
        outcomes = [(p, raw_stream(channel, [valid, p])) for p in payloads]
    else:
        outcomes = [(p, raw_unary(channel, method, p)) for p in payloads]
    assert all(o.code in ACCEPTABLE and not leaks_internals(o.details) for _, o in outcomes), _summary(outcomes)
    _assert_alive(tiny_server)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\n\xff", b"\x0a\x05abc"], ids=["varint", "bad-length", "short"])
def test_a_malformed_health_check_is_invalid_argument_without_internals(channel, payload) -> None:
    outcome = raw_unary(channel, HEALTH_CHECK, payload)
    assert outcome.code == "INVALID_ARGUMENT" and not leaks_internals(outcome.details), outcome
    assert "Error" not in outcome.details and "protobuf message" in outcome.details, outcome


def test_garbage_after_two_good_requests_still_answers_them(channel) -> None:
    """The two requests read before the corrupt message are answered; then the stream aborts."""
    good = [pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[1, 2, 3, i], start=1)],
                             request_id=f"good-{i}").SerializeToString() for i in (4, 5)]
    call = channel.stream_stream(STREAM_METHOD, request_serializer=None, response_deserializer=None)
    answered = []
    with pytest.raises(grpc.RpcError) as raised:
        for raw in call(iter([*good, b"\xff\xff\xff"]), timeout=60):
            answered.append(pb.LogitsResponse.FromString(raw).request_id)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert sorted(answered) == ["good-4", "good-5"]
