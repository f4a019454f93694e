"""Many students, one teacher: a real `dualdistill serve` process with two models, four tenants and the
disk cache.

- 4 concurrent students (different tenants, two over HTTP and two over gRPC) asking for the same data
  cost the teacher about the forward tokens of one (in-flight dedupe + cache), and get identical rows;
- `/v1/models` and ListModels list both models;
- a flood of distinct requests gets 429 / RESOURCE_EXHAUSTED (bounded queue), memory stays bounded, and
  the server serves normally afterwards;
- after a restart on the same `disk:DIR`, the same data costs zero forward tokens.

The forward-token ratio measured here is the one docs/many-students.md quotes:
    .venv/bin/pytest -q tests/server/test_many_students.py -k four_students -s
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import threading

import grpc
import httpx
import numpy as np
import pytest

from dualdistill import TeacherClient
from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from tests.fixtures.server_process import start_server
from tests.server.helpers import assert_same_result, expected_results, metric_sum

STUDENTS = {f"student-{i}": f"sk-student-{i}-7c1e9a40b2d35f86" for i in range(1, 5)}
KEY = STUDENTS["student-1"]
SEQUENCES, LENGTH, START, BATCH, TOP_K = 16, 48, 8, 4, 16
MAX_QUEUE_TOKENS = 3000


def _server_args(key_file, cache_dir) -> tuple[str, ...]:
    return (
        "--api-key-file", str(key_file),
        "--cache", f"disk:{cache_dir}",
        "--max-wait-ms", "30",
        "--max-seq-len", "256",
        "--max-queue-tokens", str(MAX_QUEUE_TOKENS),
        "--drain-seconds", "20",
    )


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("students")
    key_file = workdir / "api-keys"
    key_file.write_text("".join(f"{tenant}:{key}\n" for tenant, key in STUDENTS.items()))
    models = {"teacher": tiny_model_dir, "reference": tiny_model_dir}
    args = _server_args(key_file, workdir / "cache")
    with start_server(models, *args) as server:
        yield server, models, args


def _forward_tokens(server, model: str = "teacher") -> float:
    text = httpx.get(server.http_url + "/metrics", timeout=10).text
    return metric_sum(text, "dualdistill_forward_tokens_total", model=model)


def _metric(server, name: str, **labels: str) -> float:
    return metric_sum(httpx.get(server.http_url + "/metrics", timeout=10).text, name, **labels)


def _data(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 320, (SEQUENCES, LENGTH))


def _client(server, key: str, transport: str) -> TeacherClient:
    url = server.http_url if transport == "http" else server.grpc_target
    return TeacherClient(url, api_key=key, transport=transport, format="binary-lossless", timeout=60)


def _one_student(client: TeacherClient, data: np.ndarray) -> list:
    out = []
    for b in range(0, len(data), BATCH):
        chunk = data[b : b + BATCH].tolist()
        out += client.logits("teacher", chunk, [START] * len(chunk), top_k=TOP_K)
    return out


def run_students(server, data: np.ndarray, keys: list[str]) -> list[list]:
    """Students in threads, released together by a barrier; every second one speaks gRPC."""
    barrier = threading.Barrier(len(keys))
    outputs: list[list] = [[] for _ in keys]
    errors: list[BaseException] = []

    def student(index: int) -> None:
        with _client(server, keys[index], "http" if index % 2 == 0 else "grpc") as client:
            try:
                barrier.wait()
                outputs[index] = _one_student(client, data)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

    threads = [threading.Thread(target=student, args=(i,)) for i in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return outputs


def test_models_lists_both_models(setup, tiny_model) -> None:
    server, _, _ = setup
    response = httpx.get(server.http_url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    models = response.json()["models"]
    assert [m["name"] for m in models] == ["teacher", "reference"]
    assert {m["fingerprint"] for m in models} == {tiny_model.info.fingerprint}
    with grpc.insecure_channel(server.grpc_target) as channel:
        listed = teacher_pb2_grpc.TeacherStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {KEY}"),), timeout=10)
    assert [m.name for m in listed.models] == ["teacher", "reference"]
    # Each model has its own batcher: a request to "reference" runs there, not on "teacher".
    before = _forward_tokens(server, "reference")
    body = {"model": "reference", "sequences": [{"token_ids": [9, 8, 7, 6, 5], "start": 1}]}
    answer = httpx.post(server.http_url + "/v1/logits", json=body, headers={"authorization": f"Bearer {KEY}"},
                        timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == "reference"
    assert _forward_tokens(server, "reference") - before == 5


def test_four_students_cost_the_forward_tokens_of_one(setup, tiny_model) -> None:
    server, _, _ = setup
    one_data, four_data = _data(1), _data(2)  # fresh data for each run: nothing cached yet
    before = _forward_tokens(server)
    (alone,) = run_students(server, one_data, [KEY])
    one = _forward_tokens(server) - before

    before = _forward_tokens(server)
    hits_before = _metric(server, "dualdistill_cache_hits_total", model="teacher")
    joined_before = _metric(server, "dualdistill_deduplicated_sequences_total", model="teacher")
    outputs = run_students(server, four_data, list(STUDENTS.values()))
    four = _forward_tokens(server) - before
    hits = _metric(server, "dualdistill_cache_hits_total", model="teacher") - hits_before
    joined = _metric(server, "dualdistill_deduplicated_sequences_total", model="teacher") - joined_before

    ratio = four / one
    print(f"\nforward tokens: 1 student {one:.0f}, 4 students {four:.0f}, ratio {ratio:.3f} "
          f"(cache hits {hits:.0f}, joined in flight {joined:.0f})")
    assert one == SEQUENCES * LENGTH  # each sequence computed exactly once
    assert ratio <= 1.1
    recomputed = (four - SEQUENCES * LENGTH) / LENGTH
    assert hits + joined + recomputed == 3 * SEQUENCES  # every extra student's sequence is accounted for
    for other in outputs[1:]:
        for got, want in zip(other, outputs[0], strict=True):
            assert_same_result(got, want, atol=0)  # bit-identical rows for every student
    body = {"sequences": [{"token_ids": row.tolist(), "start": START} for row in four_data[:2]], "top_k": TOP_K}
    for got, want in zip(outputs[0][:2], expected_results(tiny_model, body), strict=True):
        assert_same_result(got, want)
    assert len(alone) == SEQUENCES


REQUIRED_METRICS = (
    "dualdistill_requests_total", "dualdistill_request_seconds", "dualdistill_queue_tokens",
    "dualdistill_batch_tokens", "dualdistill_forward_seconds", "dualdistill_forward_tokens_total",
    "dualdistill_cache_hits_total", "dualdistill_cache_misses_total", "dualdistill_response_bytes_total",
)


def test_metrics_cover_requests_tenants_cache_and_bytes(setup) -> None:
    server, _, _ = setup
    text = httpx.get(server.http_url + "/metrics", timeout=10).text
    for name in REQUIRED_METRICS:
        assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? ", text, flags=re.M), name
    for tenant in STUDENTS:
        assert metric_sum(text, "dualdistill_requests_total", tenant=tenant, code="OK") >= 4, tenant
    assert metric_sum(text, "dualdistill_requests_total", route="/dualdistill.v1.Teacher/GetLogits") >= 8
    assert metric_sum(text, "dualdistill_response_bytes_total", route="/v1/logits") > 0
    assert metric_sum(text, "dualdistill_response_bytes_total", route="/dualdistill.v1.Teacher/GetLogits") > 0
    assert metric_sum(text, "dualdistill_cache_misses_total", model="teacher") >= 2 * SEQUENCES
    assert metric_sum(text, "dualdistill_batch_tokens_count", model="teacher") >= 1


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_overload_gets_429_with_bounded_memory_and_recovers(setup) -> None:
    server, _, _ = setup
    rss_before = _rss_bytes(server.process.pid)
    rng = np.random.default_rng(3)

    def body() -> dict:  # 4 x 200 = 800 tokens, never seen before
        return {"model": "teacher", "top_k": 8,
                "sequences": [{"token_ids": rng.integers(0, 320, 200).tolist(), "start": 100} for _ in range(4)]}

    async def flood():
        keys = list(STUDENTS.values())
        async with httpx.AsyncClient(base_url=server.http_url, timeout=120) as client, \
                grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = teacher_pb2_grpc.TeacherStub(channel)

            async def over_grpc(i: int) -> str:
                b = body()
                request = pb.LogitsRequest(model="teacher", top_k=8, sequences=[pb.Sequence(**s) for s in b["sequences"]])
                try:
                    await stub.GetLogits(request, metadata=(("authorization", f"Bearer {keys[i % 4]}"),), timeout=120)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name

            async def over_http(i: int) -> httpx.Response:
                return await client.post("/v1/logits", json=body(), headers={"authorization": f"Bearer {keys[i % 4]}"})

            # Interleaved, so that both transports meet the full queue.
            calls = [over_http(i) if i % 2 == 0 else over_grpc(i) for i in range(60)]
            outcomes = await asyncio.gather(*calls)
            return outcomes[0::2], outcomes[1::2]

    http_responses, grpc_codes = asyncio.run(flood())
    http_codes = collections.Counter(r.status_code for r in http_responses)
    grpc_codes = collections.Counter(grpc_codes)
    assert set(http_codes) <= {200, 429} and set(grpc_codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (http_codes, grpc_codes)
    assert http_codes[200] + grpc_codes["OK"] >= 1, (http_codes, grpc_codes)  # the queue admits what fits
    assert http_codes[429] >= 5 and grpc_codes["RESOURCE_EXHAUSTED"] >= 5, (http_codes, grpc_codes)
    for response in http_responses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert "max_queue_tokens" in response.json()["error"]["message"]
    assert _metric(server, "dualdistill_queue_tokens") == 0
    assert _rss_bytes(server.process.pid) - rss_before < 300 * 2**20
    again = httpx.post(server.http_url + "/v1/logits", json=body(), headers={"authorization": f"Bearer {KEY}"},
                       timeout=60)
    assert again.status_code == 200, again.text


def test_disk_cache_keeps_results_across_a_restart(setup, tiny_model) -> None:
    # Last in this module: it stops the module's server and starts a new one on the same cache directory.
    server, models, args = setup
    data = _data(4)
    with _client(server, KEY, "http") as client:
        first = _one_student(client, data)
    assert server.stop() == 0  # the drain writes what is still waiting for the disk
    with start_server(models, *args) as restarted:
        with _client(restarted, KEY, "grpc") as client:
            second = _one_student(client, data)
        assert _forward_tokens(restarted) == 0
        assert _metric(restarted, "dualdistill_cache_hits_total", model="teacher") == SEQUENCES
    for got, want in zip(second, first, strict=True):
        assert_same_result(got, want, atol=0)
    assert os.path.exists(args[args.index("--cache") + 1].removeprefix("disk:") + "/results.sqlite3")
