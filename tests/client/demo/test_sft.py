"""`dualdistill.trainer.sft`: the loss against a plain per-token loop, the batch order, and a real run on a
tiny model (deterministic, the loss falls, the output is a complete HF directory)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dualdistill.trainer.sft import (
    MARKER,
    SFTExample,
    batch_indices,
    collate_sft,
    is_complete,
    response_cross_entropy,
    sft,
)


def plain_response_ce(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits[b, t-1])[x[b, t]] summed over response positions t >= 1, over their count."""
    total, count = logits.new_zeros((), dtype=torch.float64), 0
    for b in range(input_ids.shape[0]):
        for t in range(1, input_ids.shape[1]):
            if response_mask[b, t]:
                row = logits[b, t - 1].double()
                total = total - (row[input_ids[b, t]] - torch.logsumexp(row, dim=0))
                count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("shape", [(3, 7, 11), (1, 2, 5), (4, 13, 31)])
def test_response_cross_entropy_matches_a_plain_loop(shape):
    b, length, vocab = shape
    gen = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(b, length, vocab, generator=gen, dtype=torch.float64) * 3
    input_ids = torch.randint(0, vocab, (b, length), generator=gen)
    mask = torch.rand(b, length, generator=gen) > 0.4
    mask[:, 0] = True  # position 0 is never a target, whatever the mask says
    a = logits.clone().requires_grad_(True)
    c = logits.clone().requires_grad_(True)
    ours = response_cross_entropy(a, input_ids, mask)
    ref = plain_response_ce(c, input_ids, mask)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, c.grad, atol=1e-6, rtol=1e-5)


def test_response_cross_entropy_of_an_empty_mask_is_zero_not_nan():
    logits = torch.randn(2, 4, 6)
    loss = response_cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0


def test_collate_marks_only_response_tokens():
    examples = [SFTExample((5, 6, 7), (8, 9)), SFTExample((1,), (2, 3, 4, 5))]
    ids, attention, response = collate_sft(examples, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]
    assert attention.tolist() == [[1] * 5, [1] * 5]
    assert response.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    ids, attention, response = collate_sft([SFTExample((1, 2), (3,)), SFTExample((4,), (5, 6, 7))], pad_id=99)
    assert ids[0].tolist() == [1, 2, 3, 99] and attention[0].tolist() == [1, 1, 1, 0]
    assert response[0].tolist() == [False, False, True, False]


def test_batch_indices_cover_each_epoch_once_and_depend_on_the_seed_only():
    n, batch, steps = 7, 3, 14  # 42 indices = 6 epochs, batches straddle epoch boundaries
    flat = [i for b in batch_indices(n, batch, steps, seed=5) for i in b]
    assert len(flat) == batch * steps
    for epoch in range(len(flat) // n):
        assert sorted(flat[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert flat == [i for b in batch_indices(n, batch, steps, seed=5) for i in b]
    assert flat != [i for b in batch_indices(n, batch, steps, seed=6) for i in b]
    first = list(np.random.default_rng([5, 0]).permutation(n))
    assert flat[:n] == first


def test_sft_refuses_bad_input(tmp_path, demo_models):
    _, student = demo_models
    with pytest.raises(ValueError, match="non-empty prompt and response"):
        sft(student, [SFTExample((1, 2), ())], tmp_path / "out", steps=1, progress=False)
    with pytest.raises(ValueError, match="at least one example"):
        sft(student, [], tmp_path / "out", steps=1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        sft(student, [SFTExample((1,), (2,))], tmp_path / "out", steps=1, lr=math.nan, progress=False)


def _examples(tokenizer) -> list[SFTExample]:
    pairs = [("What is 2 plus 3?", " The answer is 5."), ("What is 7 times 6?", " The answer is 42."),
             ("Add 1 and 1.", " 2"), ("What is 10 minus 4?", " It is 6.")]  # fmt: skip
    return [SFTExample(tuple(tokenizer.encode(p)), tuple(tokenizer.encode(r))) for p, r in pairs]


def test_sft_is_deterministic_learns_and_writes_a_complete_model(tmp_path, demo_models):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, student = demo_models
    tokenizer = AutoTokenizer.from_pretrained(student)
    examples = _examples(tokenizer)
    seen: list[tuple[int, float]] = []
    first = sft(student, examples, tmp_path / "a", steps=12, lr=3e-3, seed=3, batch_size=2, progress=False,
                on_step=lambda step, loss: seen.append((step, loss)))  # fmt: skip
    second = sft(student, examples, tmp_path / "b", steps=12, lr=3e-3, seed=3, batch_size=2, progress=False)
    assert [s for s, _ in seen] == list(range(1, 13)) and [x for _, x in seen] == first.losses
    assert first.losses == second.losses
    wa, wb = load_file(str(first.model_dir / "model.safetensors")), load_file(str(second.model_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # memorising four short responses: the mean of the last epoch's losses is far below the first's
    assert np.mean(first.losses[-2:]) < 0.7 * np.mean(first.losses[:2])
    assert is_complete(first.model_dir) and not (tmp_path / ".a.tmp").exists()
    facts = json.loads((first.model_dir / MARKER).read_text())
    assert facts["settings"]["steps"] == 12 and facts["losses"] == first.losses
    model = AutoModelForCausalLM.from_pretrained(first.model_dir)
    ids, attention, response = collate_sft(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        after = response_cross_entropy(model(input_ids=ids, attention_mask=attention).logits, ids, response)
        before_model = AutoModelForCausalLM.from_pretrained(student)
        before = response_cross_entropy(before_model(input_ids=ids, attention_mask=attention).logits, ids, response)
    assert float(after) < 0.7 * float(before)
