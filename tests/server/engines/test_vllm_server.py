"""`dualdistill serve --engine vllm` as a real process: models list, logits, refusals, generation, the
result cache keeping engines apart, drain with requests in flight, start-up failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from dualdistill.protocol import wire
from dualdistill.protocol.v1 import teacher_pb2 as pb
from dualdistill.protocol.v1 import teacher_pb2_grpc
from tests.fixtures.server_process import ROOT, _clean_env, start_server
from tests.server.engines.conftest import SERVER_ARGS, requires_vllm
from tests.server.helpers import metric_sum

pytestmark = requires_vllm
SEQUENCES = [{"token_ids": [1, 50, 60, 70, 80, 90, 100], "start": 2}, {"token_ids": [1, 7, 9, 11], "start": 1}]
READY_TIMEOUT = 240.0  # vLLM's start on 2 busy cores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-disk-cache")


@pytest.fixture(scope="module")
def vllm_server(head64_dir: Path, cache_dir: Path):
    # wire_kernels="auto": the codec's compiled loops load after the engine starts (main.py), the order
    # vLLM on CPU needs (engines/vllm/environment.py)
    with start_server({"tiny": head64_dir}, *SERVER_ARGS, "--engine", "vllm", "--cache", f"disk:{cache_dir}",
                      "--engine-arg", "max_num_seqs=16", ready_timeout=READY_TIMEOUT, wire_kernels="auto") as server:
        yield server


def _logits(server, **body) -> httpx.Response:
    request = {"model": "tiny", "sequences": SEQUENCES, "top_k": 5, "format": "json", **body}
    return httpx.post(server.http_url + "/v1/logits", json=request, timeout=60)


def test_the_wire_kernels_load_after_the_engine_and_binary_answers_decode(vllm_server) -> None:
    pytest.importorskip("numba")
    assert "wire codec kernels ready" in vllm_server.log_path.read_text()  # logged before "serving"
    answer = httpx.post(vllm_server.http_url + "/v1/logits", timeout=60,
                        json={"model": "tiny", "sequences": SEQUENCES, "top_k": 5, "format": "binary"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    results = wire.decode(answer.content)
    assert [r.num_rows for r in results] == [len(s["token_ids"]) - s.get("start", 1) for s in SEQUENCES]


def test_the_engine_is_warmed_up_before_the_server_is_ready(vllm_server) -> None:
    """engines/vllm/model.py `warm_up` (what vLLM compiles on first use) runs before "serving" is printed,
    so the first requests do not wait for it (tests/server/engines/test_vllm_logits.py checks the engine)."""
    log = vllm_server.log_path.read_text()
    assert "warmed up model tiny" in log
    assert log.index("warmed up model tiny") < log.index("froze")  # the freeze comes right before readiness


def test_the_engine_step_loop_and_the_model_worker_have_os_thread_names(vllm_server) -> None:
    """vLLM's work runs on the step thread; the service converts its results on the event loop when the
    server is quiet (core/batcher.py), on the model's worker when other requests are in flight: named apart
    (os_threads.py), so per-thread CPU tells them apart (bench/vllm_conversion.py)."""
    tasks = Path(f"/proc/{vllm_server.process.pid}/task")

    def names() -> set[str]:
        return {path.read_text().strip() for path in tasks.glob("*/comm")}

    assert _logits(vllm_server).status_code == 200
    assert "vllm-tiny" in names()

    def distinct(n: int) -> httpx.Response:  # a sequence no cache holds
        return _logits(vllm_server, sequences=[{"token_ids": [1, 2 + n % 300, 3 + n // 300, 4], "start": 1}])

    with ThreadPoolExecutor(8) as pool:
        for round_ in range(5):  # until requests were in flight together (they are at once, barring a stall)
            answers = pool.map(distinct, range(8 * round_, 8 * round_ + 8))
            assert {r.status_code for r in answers} == {200}
            if "model-tiny" in names():
                break
    assert "model-tiny" in names(), names()


def test_models_report_the_engine_and_dtype(vllm_server, hf_tiny) -> None:
    (info,) = httpx.get(vllm_server.http_url + "/v1/models", timeout=10).json()["models"]
    assert info["engine"] == "vllm" and info["dtype"] == "float32"
    assert info["tokenizer_sha256"] == hf_tiny.info.tokenizer_sha256
    assert info["fingerprint"] != hf_tiny.info.fingerprint
    with grpc.insecure_channel(vllm_server.grpc_target) as channel:
        response = teacher_pb2_grpc.TeacherStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert response.models[0].engine == "vllm" and response.models[0].fingerprint == info["fingerprint"]


def test_logits_agree_with_the_hf_engine(vllm_server, hf_tiny) -> None:
    from tests.server.helpers import expected_results

    response = _logits(vllm_server)
    assert response.status_code == 200, response.text
    expected = expected_results(hf_tiny, {"sequences": SEQUENCES, "top_k": 5})
    for row, reference in zip(response.json()["results"], expected, strict=True):
        ids, logprobs, _ = reference.dense()
        np.testing.assert_array_equal(row["top_ids"], ids)
        np.testing.assert_allclose(row["top_logprobs"], logprobs, atol=1e-3)
        np.testing.assert_allclose(row["token_logprobs"], reference.token_logprobs, atol=1e-3)
        np.testing.assert_allclose(row["tail_logprobs"], reference.tail_logprobs, atol=1e-3)


@pytest.mark.parametrize(("body", "field"), [({"temperature": 2.0}, "temperature"), ({"mode": "sample"}, "mode")])
def test_inexact_requests_get_422_and_invalid_argument(vllm_server, body, field) -> None:
    response = _logits(vllm_server, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field and "vllm engine" in error["message"]
    request = pb.LogitsRequest(model="tiny", sequences=[pb.Sequence(token_ids=[1, 5, 6], start=1)], **body)
    with grpc.insecure_channel(vllm_server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        teacher_pb2_grpc.TeacherStub(channel).GetLogits(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--engine hf" in caught.value.details()


def test_generation(vllm_server) -> None:
    body = {"model": "tiny", "prompts": [{"token_ids": [1, 50, 60]}, {"text": "What is 7 times 6?"}],
            "n": 2, "max_new_tokens": 8, "temperature": 0.8, "seed": 3}
    first = httpx.post(vllm_server.http_url + "/v1/generate", json=body, timeout=60)
    assert first.status_code == 200, first.text
    completions = first.json()["completions"]
    assert [c["prompt_index"] for c in completions] == [0, 0, 1, 1]
    assert all(len(c["token_ids"]) <= 8 and c["finish_reason"] in ("stop", "length") for c in completions)
    again = httpx.post(vllm_server.http_url + "/v1/generate", json=body, timeout=60).json()["completions"]
    assert [c["token_ids"] for c in again] == [c["token_ids"] for c in completions]


def test_the_result_cache_keeps_the_engines_apart(vllm_server, head64_dir: Path, cache_dir: Path) -> None:
    """An hf server fills the shared disk cache first; the vllm server must still compute its own rows."""
    sequences = [{"token_ids": [1, 33, 44, 55, 66], "start": 1}]
    with start_server({"tiny": head64_dir}, *SERVER_ARGS, "--cache", f"disk:{cache_dir}") as hf_server:
        hf_rows = _logits(hf_server, sequences=sequences).json()
        assert _logits(hf_server, sequences=sequences).json()["results"] == hf_rows["results"]  # cached there
    metrics = lambda: httpx.get(vllm_server.http_url + "/metrics", timeout=10).text  # noqa: E731
    misses = metric_sum(metrics(), "dualdistill_cache_misses_total")
    vllm_rows = _logits(vllm_server, sequences=sequences).json()
    assert metric_sum(metrics(), "dualdistill_cache_misses_total") == misses + 1
    assert vllm_rows["fingerprint"] != hf_rows["fingerprint"]
    np.testing.assert_allclose(vllm_rows["results"][0]["top_logprobs"], hf_rows["results"][0]["top_logprobs"],
                               atol=1e-3)


def test_drain_finishes_requests_in_flight(head64_dir: Path) -> None:
    with start_server({"tiny": head64_dir}, *SERVER_ARGS, "--engine", "vllm", "--drain-seconds", "60",
                      ready_timeout=READY_TIMEOUT) as server:
        body = {"model": "tiny", "prompts": [{"token_ids": [1, 50, 60]}], "max_new_tokens": 96,
                "temperature": 1.0, "seed": 0}

        def call(seed: int) -> httpx.Response:
            return httpx.post(server.http_url + "/v1/generate", json={**body, "seed": seed}, timeout=120)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(call, seed) for seed in range(4)]
            time.sleep(1.0)
            server.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        assert all(len(r.json()["completions"][0]["token_ids"]) > 0 for r in responses)
        assert server.wait(timeout=60) == 0, server.log_tail()


def _serve(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dualdistill.cli.main", "serve", "--host", "127.0.0.1", "--http-port", "0",
               "--grpc-port", "0", "--engine", "vllm", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=ROOT)


def test_an_unknown_engine_argument_is_refused_at_start(head64_dir: Path) -> None:
    done = _serve("--model", f"tiny={head64_dir}", "--engine-arg", "tensor_paralel_size=2")
    assert done.returncode == 2
    assert "tensor_paralel_size" in done.stderr and "tensor_parallel_size" in done.stderr  # names it, suggests


def test_a_model_vllm_cannot_load_exits_1_with_its_error(head64_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in head64_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    done = _serve("--model", f"tiny={broken}")
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    errors = [line["msg"] for line in lines if line.get("level") == "error"]
    assert any("vLLM could not start model 'tiny'" in message for message in errors), done.stderr[-3000:]
    assert "dualdistill serving" not in done.stdout


@pytest.mark.slow  # two vLLM engines start (about a minute on 2 busy cores)
def test_two_models_under_concurrent_requests(head64_dir: Path) -> None:
    """Two served models are two engines in one process: their steps must take turns (at once they
    corrupted memory and killed the server)."""
    with start_server({"tiny": head64_dir, "twin": head64_dir}, *SERVER_ARGS, "--engine", "vllm",
                      ready_timeout=2 * READY_TIMEOUT) as server:  # fmt: skip

        def call(i: int) -> httpx.Response:
            model = ("tiny", "twin")[i % 2]
            if i % 3 == 0:
                return httpx.post(server.http_url + "/v1/logits", timeout=120,
                                  json={"model": model, "sequences": SEQUENCES, "top_k": 5, "format": "json"})  # fmt: skip
            body = {"model": model, "prompts": [{"token_ids": [1, 50, 60 + i]}], "max_new_tokens": 12,
                    "temperature": 0.7, "n": 2, "seed": i}  # fmt: skip
            return httpx.post(server.http_url + "/v1/generate", json=body, timeout=120)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(call, range(36)))
        assert [r.status_code for r in responses] == [200] * 36, [r.text[:200] for r in responses if r.status_code != 200]
        assert server.process.poll() is None, server.log_tail()
        tiny, twin = (_logits(server, model=m).json()["results"][0]["top_logprobs"] for m in ("tiny", "twin"))
        np.testing.assert_allclose(tiny, twin, atol=1e-5)  # the same weights give the same rows
