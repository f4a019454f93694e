"""`dualdistill logits` prints the teacher's distribution table for the tiny model (real server)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualdistill.cli.logits import format_table
from dualdistill.cli.main import main
from dualdistill.client import TeacherClient
from dualdistill.protocol.results import SequenceLogits
from tests.client.test_client_process import TinyTeacher

MODEL = "tiny"


@pytest.fixture(scope="module")
def teacher(tiny_server, tiny_model_dir):
    return TinyTeacher(tiny_server.http_url, tiny_server.grpc_target, str(tiny_model_dir))


def table_rows(output: str) -> list[str]:
    lines = output.splitlines()
    dash = next(i for i, line in enumerate(lines) if set(line) == {"-"})
    return lines[dash + 1 :]


def test_format_table_by_hand():
    result = SequenceLogits(
        row_lengths=np.array([3, 2]),
        top_ids=np.array([7, 4, 9, 4, 7]),
        top_logprobs=np.log([0.5, 0.3, 0.1, 0.6, 0.2]),
        token_logprobs=np.log([0.3, 0.05]),
        tail_logprobs=np.log([0.1, 0.2]),
    )
    vocab = {4: "a", 7: " b", 9: "\n"}
    text = format_table([1, 4, 8], 1, result, vocab.get, top_k=3)
    header, _, first, second = text.splitlines()
    assert header.split()[:4] == ["pos", "token", "logprob", "prob"]
    assert first.split()[:4] == ["1", "'a'", f"{math.log(0.3):.3f}", "0.300"]
    assert "' b' 0.500  *'a' 0.300  '\\n' 0.100" in first  # actual token starred, newline escaped
    assert second.split()[:2] == ["2", "None"]  # id 8 has no text in this vocab: shown as repr(None)
    assert second.endswith("'a' 0.600  ' b' 0.200")  # a 2-entry row: no padding shown
    ids_only = format_table([1, 4, 8], 1, result, None, top_k=3)
    assert "#7 0.500  *#4 0.300" in ids_only


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_cli_prints_the_table(teacher, transport, capsys):
    from transformers import AutoTokenizer

    model_dir = teacher.model_dir
    text = "The quick brown fox jumps over the lazy dog."
    argv = [
        "logits",
        "--url",
        teacher.url(transport),
        "--model",
        MODEL,
        "--tokenizer",
        model_dir,
        "--text",
        text,
        "--top-k",
        "3",
        "--start",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(text)["input_ids"]
    with TeacherClient(teacher.url("grpc")) as client:
        (expected,) = client.logits(MODEL, [ids], [2], top_k=3)
    rows = table_rows(out)
    assert out.startswith(f"model {MODEL} ") and len(rows) == len(ids) - 2
    for row, position, logprob in zip(rows, range(2, len(ids)), expected.token_logprobs, strict=True):
        # Fixed columns: position (5), token (18), logprob (8), prob (6), two spaces apart.
        assert int(row[0:5]) == position
        assert row[7:25].strip() == repr(tokenizer.decode([ids[position]]))[:18]
        assert float(row[27:35]) == pytest.approx(logprob, abs=1e-3)
        assert float(row[37:43]) == pytest.approx(math.exp(logprob), abs=1e-3)


def test_cli_chat_and_token_ids(teacher, capsys):
    from transformers import AutoTokenizer

    url = teacher.url("grpc")
    model_dir = teacher.model_dir
    assert (
        main(
            [
                "logits",
                "--url",
                url,
                "--model",
                MODEL,
                "--tokenizer",
                model_dir,
                "--chat",
                "--text",
                "please compute 7 times 6",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    chat_rows = table_rows(capsys.readouterr().out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": "please compute 7 times 6"}])[
        "input_ids"
    ]
    assert len(chat_rows) == len(chat_ids) - 1  # the templated conversation, scored from position 1
    assert chat_rows[-2][7:25].strip() == repr("<|im_end|>")  # the template's end-of-turn token is scored too
    # Token ids need no tokenizer ("tiny" is no alias): tokens are then shown as ids.
    assert main(["logits", "--url", url, "--model", MODEL, "--token-ids", "5,17,33,60", "--top-k", "2"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row.split()[1] for row in rows] == ["#17", "#33", "#60"]


def test_cli_refuses_a_foreign_tokenizer_and_reports_errors(teacher, tmp_path, capsys):
    from tests.fixtures.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", corpus_variant=1)
    url = teacher.url("http")
    assert main(["logits", "--url", url, "--model", MODEL, "--tokenizer", str(other), "--text", "hi"]) == 1
    assert "tokenizer does not match" in capsys.readouterr().err
    assert main(["logits", "--url", url, "--model", MODEL, "--token-ids", "5", "--top-k", "2"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err  # one token has no position to score
    assert (
        main(
            ["logits", "--url", url, "--model", MODEL, "--token-ids", "5,6", "--api-key-env", "NO_SUCH_VAR_X"]
        )
        == 2
    )
    assert "NO_SUCH_VAR_X" in capsys.readouterr().err
