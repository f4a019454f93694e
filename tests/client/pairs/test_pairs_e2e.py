"""`dualdistill pairs` end to end against a real served teacher + student (tiny random models)."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from dualdistill.cli.main import main
from dualdistill.client import RetryPolicy, TeacherClient
from dualdistill.pairs import PairsConfig, read_queries, run_pairs, write_queries
from dualdistill.pairs.select import DROP_REASONS
from dualdistill.pairs.sources import directory_fingerprint
from dualdistill.pairs.store import RunPaths
from dualdistill.tasks.arithmetic import make_queries

LENGTH_VERIFIER = "def score(query, response):\n    return float(len(response))\n"
SLOW_LENGTH_VERIFIER = (
    "import asyncio\n\nasync def score(query, response):\n    await asyncio.sleep(0.15)\n"
    "    return float(len(response))\n"
)


def _queries(tmp_path, n=6, name="q.jsonl", seed=0):
    path = tmp_path / name
    write_queries(path, make_queries(n, seed=seed))
    return path


def _args(url, queries, out, *extra):
    return ["pairs", "--queries", str(queries), "--out", str(out), "--url", url, "--teacher-model", "teacher",
            "--student-model", "student", "--samples", "2", "--max-new-tokens", "8", "--no-progress", *extra]


def _records(out):
    paths = RunPaths.for_output(out)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []  # noqa: E731
    return read(paths.out), read(paths.dropped)


def _ids_exactly_once(out, expected_ids):
    kept, dropped = _records(out)
    ids = [r["id"] for r in kept + dropped]
    assert sorted(ids) == sorted(expected_ids), "every query once, across kept + dropped"


def _verifier(tmp_path, source=LENGTH_VERIFIER, name="by_length.py"):
    path = tmp_path / name
    path.write_text(source)
    return f"verifier:{path}:score"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_cli_teacher_logprob_end_to_end(service, tmp_path, capsys, transport):
    url = service.http_url if transport == "http" else service.grpc_url
    queries, out = _queries(tmp_path), tmp_path / "out" / "pairs.jsonl"
    assert main(_args(url, queries, out, "--margin", "0.5", "--concurrency", "3")) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "summary:" in printed
    kept, dropped = _records(out)
    _ids_exactly_once(out, [q["id"] for q in read_queries(queries).queries])
    with TeacherClient(service.http_url) as client:
        fingerprints = {m.name: m.fingerprint for m in client.models()}
    for r in kept:
        assert r["chosen_token_ids"] and r["rejected_token_ids"] and r["prompt_token_ids"]
        assert r["margin"] == pytest.approx(r["chosen_score"] - r["rejected_score"]) and r["margin"] >= 0.5
        assert r["chosen_score"] == max(s for s in r["positive_scores"] if s is not None)
        assert r["rejected_score"] == min(s for s in r["negative_scores"] if s is not None)
        assert (r["teacher_model"], r["student_model"], r["scorer"]) == ("teacher", "student", "teacher-logprob")
        assert r["teacher_fingerprint"] == fingerprints["teacher"]
        assert r["student_fingerprint"] == fingerprints["student"]
        assert r["messages"][0]["role"] == "user" and r["query_extra"]["answer"] >= 0
    for r in dropped:
        assert r["reason"] in DROP_REASONS
        if r["reason"] == "below_margin":
            assert r["margin"] < 0.5
    paths = RunPaths.for_output(out)
    summary = json.loads(paths.summary.read_text())
    assert (summary["kept"], summary["dropped"]) == (len(kept), len(dropped))
    assert summary["settings"]["margin"] == 0.5 and summary["run"]["todo"] == 6
    assert paths.margins_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_logprob_equals_in_process_mean(service, tiny_models):
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from dualdistill.client import AsyncTeacherClient
    from dualdistill.pairs.scorers import TeacherLogprobScorer

    with TeacherClient(service.http_url) as client:
        completions = client.generate("teacher", [[{"role": "user", "content": "What is 7 times 6?"}]],
                                      max_new_tokens=10, n=3, seed=4)
        completions.append(completions[0].__class__(0, completions[0].prompt_token_ids, [], "", "stop"))
        scores = TeacherLogprobScorer(client, "teacher").score({"id": 1}, completions)

    async def async_scores():
        async with AsyncTeacherClient(service.grpc_url) as aclient:
            return await TeacherLogprobScorer(aclient, "teacher").ascore({"id": 1}, completions)

    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"]).eval()
    for completion, score in zip(completions[:3], scores, strict=False):
        prompt, response = completion.prompt_token_ids, completion.token_ids
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
        token_logprobs = logprobs[len(prompt) - 1 : -1].gather(1, ids[0, len(prompt) :, None])  # (|y|, 1)
        assert score == pytest.approx(token_logprobs.double().mean().item(), abs=1e-4)
    assert math.isnan(scores[3])  # no tokens, no score
    assert asyncio.run(async_scores())[:3] == pytest.approx(scores[:3], abs=1e-5)


def test_resume_after_crash_mid_line(service, tmp_path, capsys):
    queries, out = _queries(tmp_path, n=8), tmp_path / "pairs.jsonl"
    args = _args(service.http_url, queries, out, "--scorer", _verifier(tmp_path), "--margin", "-1000",
                 "--concurrency", "3")
    assert main(args) == 0
    ids = [q["id"] for q in read_queries(queries).queries]
    _ids_exactly_once(out, ids)
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 8  # margin -1000 keeps every pair (every sample has >= 1 token)
    # the crash: the last line half written, the one before it never written
    out.write_bytes(b"".join(lines[:-2]) + lines[-1][: len(lines[-1]) // 2])
    capsys.readouterr()
    assert main(args) == 0
    assert "this run: 2 queries" in capsys.readouterr().out
    _ids_exactly_once(out, ids)
    summary = json.loads(RunPaths.for_output(out).summary.read_text())
    assert summary["run"]["todo"] == 2 and summary["run"]["skipped"] == 6
    assert summary["run"]["truncated_bytes"] == len(lines[-1]) // 2
    before = out.read_bytes()
    assert main(args) == 0  # nothing left to do
    assert out.read_bytes() == before
    assert json.loads(RunPaths.for_output(out).summary.read_text())["run"]["todo"] == 0


def test_bad_lines_reported_and_strict_refuses(service, tmp_path, capsys):
    good = make_queries(2, seed=1)
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps(good[0]) + "\n{broken\n\n" + json.dumps({"id": good[0]["id"], "prompt": "dup"})
                       + "\n" + json.dumps(good[1]) + "\n")
    out = tmp_path / "strict" / "pairs.jsonl"
    assert main(_args(service.http_url, queries, out, "--strict")) == 2
    err = capsys.readouterr().err
    assert "line 2: invalid JSON" in err and "line 3: empty line" in err and "line 4: duplicate id" in err
    assert "nothing was run" in err and not out.exists()
    out = tmp_path / "lenient" / "pairs.jsonl"
    assert main(_args(service.http_url, queries, out, "--scorer", _verifier(tmp_path))) == 0
    assert "line 2: invalid JSON" in capsys.readouterr().err
    _ids_exactly_once(out, [good[0]["id"], good[1]["id"]])


def test_arithmetic_verifier_and_length_verifier(service, tmp_path):
    queries = make_queries(6, seed=2)
    out = tmp_path / "arith.jsonl"
    config = PairsConfig(teacher_model="teacher", student_model="student", samples=2, max_new_tokens=8,
                         scorer="verifier:dualdistill.tasks.arithmetic:verify", margin=1.0, min_score=1.0)
    result = run_pairs(queries, out, config, url=service.http_url, progress=False)
    kept, dropped = _records(out)
    assert result.summary["total"] == 6 and len(kept) + len(dropped) == 6
    for r in kept + dropped:
        assert set(r["positive_scores"] + r["negative_scores"]) <= {0.0, 1.0}
    for r in kept:  # a random tiny model rarely answers right, but a kept pair must be right vs wrong
        assert (r["chosen_score"], r["rejected_score"]) == (1.0, 0.0)
    for r in dropped:
        assert r["reason"] in ("below_min_score", "below_margin")

    # a custom verifier (response length) gives deterministic scores: check the filter on real samples
    out = tmp_path / "length.jsonl"
    config = PairsConfig(teacher_model="teacher", student_model="student", samples=3, max_new_tokens=8,
                         scorer=_verifier(tmp_path), margin=3.0, concurrency=2)
    result = run_pairs(queries, out, config, url=service.grpc_url, progress=False)
    kept, dropped = _records(out)
    assert len(kept) + len(dropped) == 6
    for r in kept:
        assert r["chosen_score"] == len(r["chosen"]) == max(r["positive_scores"])
        assert r["rejected_score"] == len(r["rejected"]) == min(r["negative_scores"])
        assert r["margin"] >= 3.0
    for r in dropped:
        assert r["reason"] == "below_margin"
        assert max(r["positive_scores"]) - min(r["negative_scores"]) < 3.0
    config.margin = -1e9  # everything passes: kept pairs, deterministically
    result = run_pairs(queries, tmp_path / "all.jsonl", config, url=service.http_url, progress=False)
    assert result.summary["kept"] == 6


def test_local_student_dir(service, tiny_models, tmp_path):
    queries = make_queries(3, seed=3)
    config = PairsConfig(teacher_model="teacher", student_dir=str(tiny_models["student"]), samples=2,
                         max_new_tokens=6, scorer=_verifier(tmp_path), margin=-1e9, chat=True)
    result = run_pairs(queries, tmp_path / "local.jsonl", config, url=service.http_url, progress=False)
    kept, _ = _records(tmp_path / "local.jsonl")
    assert result.summary["kept"] == 3
    for r in kept:
        assert r["student_model"] == "student"
        assert r["student_fingerprint"] == directory_fingerprint(tiny_models["student"])
        assert 1 <= len(r["rejected_token_ids"]) <= 6


def test_refuses_other_tokenizer_and_unknown_model(service, tmp_path, capsys):
    queries, out = _queries(tmp_path, n=2), tmp_path / "pairs.jsonl"
    args = _args(service.http_url, queries, out)
    assert main([*args, "--student-model", "odd"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main([*args, "--student-model", "nope"]) == 2
    assert "'nope' is not served" in capsys.readouterr().err
    assert main([*args, "--scorer", "bleu"]) == 2
    assert "unknown scorer 'bleu'" in capsys.readouterr().err


def test_overlong_prompt_dropped_as_service_rejected(service, tmp_path):
    queries = make_queries(2, seed=8) + [{"id": "long", "prompt": "0 1 2 3 4 5 6 7 8 9 " * 200}]
    config = PairsConfig(teacher_model="teacher", student_model="student", samples=2, max_new_tokens=4,
                         scorer=_verifier(tmp_path), margin=-1e9)
    result = run_pairs(queries, tmp_path / "p.jsonl", config, url=service.http_url, progress=False)
    kept, dropped = _records(tmp_path / "p.jsonl")
    assert len(kept) == 2 and [r["id"] for r in dropped] == ["long"]
    assert dropped[0]["reason"] == "service_rejected" and "prompts[0]" in dropped[0]["detail"]
    assert result.summary["dropped_by_reason"] == {"service_rejected": 1}


def _wait_for_lines(out, count, timeout=60.0):
    paths = RunPaths.for_output(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = sum(p.read_text().count("\n") for p in (paths.out, paths.dropped) if p.exists())
        if lines >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} lines written in {timeout} s")


def test_service_unreachable_mid_run_retried_then_clean_exit_and_resume(service, tmp_path, capsys):
    from tests.client.pairs.conftest import TcpProxy

    proxy = TcpProxy(service.http_port).restore()
    try:
        # 1) every connection cut mid-run, then back: the client's retries carry the run through
        queries = make_queries(10, seed=6)
        config = PairsConfig(teacher_model="teacher", student_model="student", samples=2, max_new_tokens=6,
                             scorer=_verifier(tmp_path, SLOW_LENGTH_VERIFIER, "slow.py"), margin=-1e9,
                             concurrency=2)
        retries, outcome = [], {}
        policy = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2)

        def run():
            outcome["result"] = run_pairs(queries, tmp_path / "a.jsonl", config, url=proxy.http_url,
                                          retries=policy, on_retry=lambda *a: retries.append(a), progress=False)

        thread = threading.Thread(target=run)
        thread.start()
        written = _wait_for_lines(tmp_path / "a.jsonl", 2)
        proxy.cut()
        time.sleep(1.0)
        proxy.restore()
        thread.join(timeout=120)
        assert not thread.is_alive() and outcome["result"].summary["kept"] == 10
        assert written < 10 and retries, "the outage happened mid-run and was retried"
        assert all(error.code == "UNAVAILABLE" for _, error, _ in retries)
        _ids_exactly_once(tmp_path / "a.jsonl", [q["id"] for q in queries])

        # 2) cut for good: a clean exit (status 3) with the finished queries saved, then a resume
        path = tmp_path / "q.jsonl"
        write_queries(path, make_queries(10, seed=7))
        out = tmp_path / "b.jsonl"
        args = _args(proxy.http_url, path, out, "--scorer", f"verifier:{tmp_path}/slow.py:score",
                     "--margin=-1e9", "--max-attempts", "2", "--max-new-tokens", "6")
        codes = []
        thread = threading.Thread(target=lambda: codes.append(main(args)))
        thread.start()
        _wait_for_lines(out, 2)
        proxy.cut()
        thread.join(timeout=60)
        assert codes == [3]
        err = capsys.readouterr().err
        assert "rerun the same command to resume" in err and "UNAVAILABLE" in err and "retry 1" in err
        kept, dropped = _records(out)
        assert 2 <= len(kept) + len(dropped) < 10
    finally:
        proxy.cut()
    resume = [a if a != proxy.http_url else service.http_url for a in args]
    assert main(resume) == 0
    _ids_exactly_once(out, [q["id"] for q in read_queries(path).queries])


@pytest.mark.slow
def test_service_outage_mid_run_retried_then_clean_exit_and_resume(service, tiny_models, tmp_path, capsys):
    from tests.client.pairs.conftest import ServerProcess

    server = ServerProcess({k: tiny_models[k] for k in ("teacher", "student")}, tmp_path / "outage.log").start()
    try:
        # 1) the server dies mid-run and comes back: the client's retries carry the run through
        queries = make_queries(12, seed=4)
        config = PairsConfig(teacher_model="teacher", student_model="student", samples=2, max_new_tokens=6,
                             scorer=_verifier(tmp_path, SLOW_LENGTH_VERIFIER, "slow.py"), margin=-1e9,
                             concurrency=2)
        retries, outcome = [], {}
        policy = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.3)

        def run():
            outcome["result"] = run_pairs(queries, tmp_path / "a.jsonl", config, url=server.http_url,
                                          retries=policy, on_retry=lambda *a: retries.append(a), progress=False)

        thread = threading.Thread(target=run)
        thread.start()
        written = _wait_for_lines(tmp_path / "a.jsonl", 2)
        server.stop()
        server.start()
        thread.join(timeout=120)
        assert not thread.is_alive() and outcome["result"].summary["kept"] == 12
        assert written < 12 and retries, "the outage happened mid-run and was retried"
        _ids_exactly_once(tmp_path / "a.jsonl", [q["id"] for q in queries])

        # 2) the server dies and stays down: a clean exit (status 3), then a resume elsewhere completes it
        path = tmp_path / "q.jsonl"
        write_queries(path, make_queries(12, seed=5))
        out = tmp_path / "b.jsonl"
        args = _args(server.http_url, path, out, "--scorer", f"verifier:{tmp_path}/slow.py:score",
                     "--margin=-1e9", "--max-attempts", "2", "--samples", "2", "--max-new-tokens", "6")
        codes = []
        thread = threading.Thread(target=lambda: codes.append(main(args)))
        thread.start()
        _wait_for_lines(out, 2)
        server.stop()
        thread.join(timeout=120)
        assert codes == [3]
        err = capsys.readouterr().err
        assert "rerun the same command to resume" in err and "UNAVAILABLE" in err
        kept, dropped = _records(out)
        assert 2 <= len(kept) + len(dropped) < 12
    finally:
        server.stop()
    # the same models served elsewhere (same fingerprints): the rerun finishes what is left
    resume = [a if a != server.http_url else service.http_url for a in args]
    assert main(resume) == 0
    _ids_exactly_once(out, [q["id"] for q in read_queries(path).queries])
