"""Engine plumbing that needs no vLLM: settings, --engine-arg parsing, the step loop, the tail formula."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from dualdistill.cli.serve import engine_arg, overrides_from_args
from dualdistill_server.config import ServerConfig
from dualdistill_server.engines import check_settings
from dualdistill_server.engines.vllm.logits import ranked_top_k, tail_logprobs
from dualdistill_server.engines.vllm.loop import EngineDead, EngineLoop
from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobsTap


def test_engine_arg_values_are_json_when_they_parse() -> None:
    assert engine_arg("tensor_parallel_size=2") == ("tensor_parallel_size", 2)
    assert engine_arg("enforce_eager=true") == ("enforce_eager", True)
    assert engine_arg("gpu_memory_utilization=0.85") == ("gpu_memory_utilization", 0.85)
    assert engine_arg("distributed_executor_backend=ray") == ("distributed_executor_backend", "ray")
    assert engine_arg('override_generation_config={"temperature": 1}') == (
        "override_generation_config", {"temperature": 1})
    assert engine_arg("quantization=") == ("quantization", "")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        engine_arg("tensor_parallel_size")


def test_engine_args_reach_the_settings() -> None:
    args = SimpleNamespace(models=["t=/m"], engine="vllm", engine_args=[("a", 1), ("b", "x"), ("a", 2)])
    overrides = overrides_from_args(args)
    assert overrides["engine"] == "vllm" and overrides["engine_args"] == {"a": 2, "b": "x"}


def test_engine_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        ServerConfig(engine="tgi")
    monkeypatch.setenv("DUALDISTILL_ENGINE", "vllm")
    monkeypatch.setenv("DUALDISTILL_ENGINE_ARGS", '{"tensor_parallel_size": 4}')
    config = ServerConfig()
    assert config.engine == "vllm" and config.engine_args == {"tensor_parallel_size": 4}
    with pytest.raises(ValueError, match="--engine vllm only"):
        check_settings("hf", {"tensor_parallel_size": 2})
    check_settings("hf", {})


def test_tail_sums_the_ranks_after_top_k() -> None:
    """A peaked row whose tail (~1e-12) is far below float32's resolution of 1 - sum(top k)."""
    import torch

    vocab = 1000
    logits = np.concatenate([[20.0, 0.0], np.linspace(-8, -300, vocab - 2)]) + 7.3
    exact_logprobs = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    exact = np.log(np.exp(np.sort(exact_logprobs)[::-1][3:]).sum())
    # What vLLM returns: log_softmax in float32 (x - lse(x), each rounded at |x|), the first k + m ranks.
    logprobs = torch.log_softmax(torch.tensor(logits, dtype=torch.float32), -1).numpy()
    ranked = np.sort(logprobs)[::-1][: 3 + 128][None]
    (tail,) = tail_logprobs(ranked, 3, vocab)
    assert tail == pytest.approx(exact, abs=1e-3)
    with np.errstate(invalid="ignore"):
        naive = np.log1p(-np.exp(ranked[0, :3].astype(np.float64)).sum())
    assert not np.isclose(naive, exact, atol=0.1)  # why the ranks are summed: 1 - sum(top k) is rounding here


def test_tail_of_a_flat_row_uses_the_resolved_rest() -> None:
    vocab = 5000
    logprobs = np.full(vocab, -np.log(vocab))
    ranked = logprobs[: 10 + 128].astype(np.float32)[None]
    (tail,) = tail_logprobs(ranked, 10, vocab)
    assert tail == pytest.approx(np.log((vocab - 10) / vocab), abs=1e-5)
    assert np.isneginf(tail_logprobs(ranked[:, :10], 10, 10)).all()  # the row covers the vocab


def test_ranked_top_k_sorts_ties_toward_the_lower_id_like_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    values = -np.sort(rng.exponential(size=(50, 16)).astype(np.float32), axis=1)[:, ::-1] - 0.1  # descending
    values = np.ascontiguousarray(values)
    values[::3, 4:7] = values[::3, 4:5]  # a run of ties in every third row
    values[1, :] = -np.inf  # a row of -inf ties
    values[2, 5] = np.nan
    ids = np.stack([rng.permutation(1000)[:16] for _ in range(50)]).astype(np.int32)
    got_ids, got_values = ranked_top_k(ids, values)
    order = np.lexsort((ids, -values), axis=-1)  # the plain full sort: logprob descending, then id
    np.testing.assert_array_equal(got_ids, np.take_along_axis(ids, order, axis=1))
    np.testing.assert_array_equal(got_values, np.take_along_axis(values, order, axis=1))
    assert got_ids.dtype == np.int64 and got_values.dtype == np.float32
    assert not np.array_equal(got_ids[::3], ids[::3])  # the tied rows did move


def _logprobs_tensors(rows: int, width: int, offset: int):
    import torch

    ids = torch.arange(rows * width, dtype=torch.int32).reshape(rows, width) + offset
    return SimpleNamespace(logprob_token_ids=ids, logprobs=-ids.float() / 7, selected_token_ranks=ids[:, 0] + 1)


def test_the_tap_takes_watched_requests_tensors_before_vllms_output_processor() -> None:
    chunks = {"a": [_logprobs_tensors(3, 4, 0), _logprobs_tensors(2, 4, 100)], "b": [_logprobs_tensors(2, 4, 9)],
              "c": [_logprobs_tensors(1, 4, 5)]}
    steps = [[SimpleNamespace(request_id=r, new_prompt_logprobs_tensors=c[i]) for r, c in chunks.items() if i < len(c)]
             for i in range(2)]
    core = SimpleNamespace(get_output=lambda: SimpleNamespace(outputs=steps.pop(0)))
    tap = PromptLogprobsTap(SimpleNamespace(engine_core=core))
    assert tap.installed
    tap.watch("a")
    tap.watch("b", keep_flat=True)
    first, second = core.get_output().outputs, core.get_output().outputs
    assert first[0].new_prompt_logprobs_tensors is None and second[0].new_prompt_logprobs_tensors is None  # a: taken
    assert first[1].new_prompt_logprobs_tensors is chunks["b"][0]  # b: kept for vLLM's lists as well
    assert first[2].new_prompt_logprobs_tensors is chunks["c"][0]  # c: not watched, untouched
    a = tap.take("a")
    assert a.positions == 5 and a.token_ids.dtype == np.int32
    np.testing.assert_array_equal(a.token_ids[3:], chunks["a"][1].logprob_token_ids.numpy())  # chunks in order
    np.testing.assert_array_equal(a.logprobs, -a.token_ids.astype(np.float32) / 7)
    np.testing.assert_array_equal(a.token_ranks, a.token_ids[:, 0] + 1)
    assert tap.take("a") is None and tap.take("c") is None  # forgotten once taken; never watched
    assert tap.take("b").positions == 2
    assert not PromptLogprobsTap(SimpleNamespace()).installed  # no engine core to wrap: vLLM's lists as before


class FakeEngine:
    """add_request / step / has_unfinished_requests of an LLMEngine; each request finishes after 2 steps."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.running: dict[str, int] = {}
        self.steps = 0
        self.fail_at_step = fail_at_step
        self.seen_together = 0

    def add_request(self, request_id, prompt, params) -> None:
        if prompt == "bad":
            raise ValueError("prompt too long")
        self.running[request_id] = 0

    def step(self):
        self.steps += 1
        if self.fail_at_step is not None and self.steps >= self.fail_at_step:
            raise RuntimeError("worker died")
        self.seen_together = max(self.seen_together, len(self.running))
        time.sleep(0.01)
        out = []
        for request_id in list(self.running):
            self.running[request_id] += 1
            if self.running[request_id] == 2:
                del self.running[request_id]
                out.append(SimpleNamespace(request_id=request_id, finished=True))
        return out


def test_loop_batches_concurrent_requests_and_fails_a_bad_one_alone() -> None:
    engine = FakeEngine()
    loop = EngineLoop(engine, "m")
    try:
        futures = [loop.submit(f"p{i}", None) for i in range(5)]
        bad = loop.submit("bad", None)
        assert all(f.result(timeout=5).output.finished for f in futures)
        with pytest.raises(ValueError, match="too long"):
            bad.result(timeout=5)
        assert engine.seen_together > 1  # requests submitted together ran in the same steps
    finally:
        loop.close()
    with pytest.raises(EngineDead, match="shut down"):
        loop.submit("late", None).result(timeout=1)


def test_a_failed_step_fails_every_request_and_tells_the_listeners() -> None:
    loop = EngineLoop(FakeEngine(fail_at_step=1), "m")
    told: list[BaseException] = []
    called = threading.Event()
    loop.on_failure(lambda error: (told.append(error), called.set()))
    future: Future = loop.submit("p", None)
    with pytest.raises(EngineDead, match="worker died"):
        future.result(timeout=5)
    assert called.wait(5) and "worker died" in repr(told[0])
    with pytest.raises(EngineDead):
        loop.submit("again", None).result(timeout=1)
    late: list[BaseException] = []
    loop.on_failure(late.append)  # subscribing after the failure hears of it at once
    assert late and late[0] is told[0]
    loop.close()


def test_an_engine_failure_reaches_the_server_loop() -> None:
    from dualdistill_server.main import _engine_failures

    class Model:
        def on_failure(self, listener):
            self.listener = listener

    async def run() -> tuple:
        model = Model()
        failed = _engine_failures({"teacher": model, "plain": object()})
        threading.Thread(target=model.listener, args=(RuntimeError("gone"),)).start()
        return await asyncio.wait_for(failed, 5)

    name, error = asyncio.run(run())
    assert name == "teacher" and str(error) == "gone"


def test_the_kernel_rebinding_scan_of_vllm_passes_once_numba_is_loaded() -> None:
    """vLLM's CPU platform scans every module attribute with hasattr(v, "__dict__") / vars(v).get(...);
    llvmlite's library object (loaded with numba, which the wire codec uses) fails that scan until
    `guard_llvmlite_for_vllm` gives it a real `__dict__` answer (the codec calls it when it loads numba,
    import_vllm before every engine start; test_vllm_*.py start engines after the codec tests have loaded
    numba in this process)."""
    pytest.importorskip("numba")
    from llvmlite.binding import ffi

    from dualdistill.protocol.wire.kernels import guard_llvmlite_for_vllm

    def scan(value):  # the shape of vllm.triton_utils.dispatcher._rebind_kernels's check
        return vars(value).get("kernel") if hasattr(value, "__dict__") else None

    ffi.lib._fntab.pop("__dict__", None)
    with pytest.raises(AttributeError, match="no attribute 'get'"):
        scan(ffi.lib)
    guard_llvmlite_for_vllm()
    assert scan(ffi.lib) is None
    guard_llvmlite_for_vllm()  # idempotent
    assert ffi.lib._fntab["__dict__"] == {}
