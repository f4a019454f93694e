"""`dualdistill pairs` on the real SmolLM2-135M-Instruct teacher and a 3-layer pruned copy as the student
(the setup docs/pairs.md describes); checks the run works end to end, not the numbers."""

from __future__ import annotations

import json
import signal

import pytest

from dualdistill.cli.main import main
from dualdistill.pairs import write_queries
from dualdistill.pairs.store import RunPaths
from dualdistill.tasks.arithmetic import make_queries

# slow too: pruning, loading and sampling a 135M model takes minutes on a busy 2-core CPU.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pairs_on_smollm2_teacher_and_pruned_student(tmp_path):
    from dualdistill_server.models import prepare_smollm2, prune_layers
    from tests.client.pairs.conftest import ServerProcess

    teacher = prepare_smollm2()  # cached after the first call
    student = prune_layers(teacher, tmp_path / "student", keep=[0, 10, 20])
    server = ServerProcess({"teacher": teacher, "student": student}, tmp_path / "server.log").start(timeout=300)
    try:
        queries = tmp_path / "q.jsonl"
        write_queries(queries, make_queries(2, seed=0))
        out = tmp_path / "pairs.jsonl"
        code = main(["pairs", "--queries", str(queries), "--out", str(out), "--url", server.http_url,
                     "--teacher-model", "teacher", "--student-model", "student", "--samples", "2",
                     "--max-new-tokens", "12", "--concurrency", "2", "--no-progress"])
    finally:
        server.stop(signal.SIGTERM)
    assert code == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = RunPaths.for_output(out).dropped.read_text().splitlines()
    assert len(records) + len(dropped) == 2
    for r in records:  # margin 0: every kept pair has the teacher's sample at least as likely
        assert r["chosen_score"] >= r["rejected_score"]
        prompt = tokenizer.decode(r["prompt_token_ids"])
        assert r["prompt"] in prompt and prompt.endswith("<|im_start|>assistant\n")  # the chat template
        assert r["chosen"] == tokenizer.decode(r["chosen_token_ids"], skip_special_tokens=True)
