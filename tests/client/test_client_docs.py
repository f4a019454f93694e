"""The training loop in docs/client.md runs as written against the tiny teacher (names swapped for the
test's: model directory, URL, model name)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def training_loop_source() -> str:
    section = DOC.read_text().split("## A training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def pair_batches_for(tokenizer, count: int = 3):
    """Batches of (prompt + chosen, prompt + rejected) pairs: unpadded lists for the teacher, padded tensors
    and label-position response masks for the student."""
    prompts = ["What is 7 times 6?", "please compute 12 plus 30", "The quick brown fox"]
    answers = [(" The answer is 42.", " 13"), (" 42", " The answer is 7."), (" jumps over", " the lazy")]

    def side(sequences, starts):
        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.bool)
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, start : len(sequence)] = True
        return ids, mask

    batches = []
    for b in range(count):
        chosen, rejected, starts_c, starts_r = [], [], [], []
        for prompt, (good, bad) in zip(prompts[b:] + prompts[:b], answers, strict=True):
            prompt_ids = tokenizer(prompt)["input_ids"]
            chosen.append(prompt_ids + tokenizer(good)["input_ids"])
            rejected.append(prompt_ids + tokenizer(bad)["input_ids"])
            starts_c.append(len(prompt_ids))
            starts_r.append(len(prompt_ids))
        input_ids, response_mask = side(chosen + rejected, starts_c + starts_r)  # stacked [chosen; rejected]
        batches.append(
            dict(
                chosen=chosen,
                rejected=rejected,
                chosen_starts=starts_c,
                rejected_starts=starts_r,
                input_ids=input_ids,
                response_mask=response_mask,
            )
        )
    return batches


def test_training_loop_example_runs(tiny_server, tmp_path, capsys):
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_model import build_tiny_model

    # A student that shares the teacher's tokenizer but not its weights, so the KD terms are clearly positive.
    model_dir = str(build_tiny_model(tmp_path / "student", seed=1))
    source = (
        training_loop_source()
        .replace('"student-dir"', repr(model_dir))
        .replace('"teacher.internal:50051"', repr(tiny_server.grpc_target))
        .replace('"smollm2"', '"tiny"')
    )
    torch.manual_seed(0)
    namespace = {"pair_batches": pair_batches_for(AutoTokenizer.from_pretrained(model_dir))}
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - the documented example itself
    out = namespace["out"]
    assert all(math.isfinite(term.item()) for term in (out.loss, out.dpo, out.pos, out.neg))
    assert out.pos.item() > 0 and out.neg.item() > 0  # random student vs random teacher: KD terms positive
    assert namespace["batches"].stats.batches == 3
    assert "teacher stall" in capsys.readouterr().out
    namespace["client"].close()


def test_readme_shows_the_tested_training_loop():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"```python\n{training_loop_source()}```" in readme, (
        "README's training loop drifted from docs/client.md"
    )
