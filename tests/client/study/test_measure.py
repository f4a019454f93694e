"""The per-query measurements against plain implementations on tiny random models.

The teacher rows are the teacher model's FULL distribution (k = vocab, no tail), so the bucketed KL of
`sample_kl` must equal the plain full-vocabulary KL computed here from both models' logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualdistill.protocol.results import SequenceLogits
from dualdistill.study.measure import _cut, answers, own_sample_kl, pair_scores, sample_kl, teacher_logprob
from dualdistill.trainer.data import PairExample
from dualdistill.trainer.teacher import FetchedTeacher


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from tests.fixtures.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("measure")
    teacher_dir = build_tiny_model(folder / "teacher", num_layers=2, seed=0)
    student_dir = build_tiny_model(folder / "student", num_layers=1, seed=1)
    load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()  # noqa: E731
    return load(teacher_dir), load(student_dir), student_dir


def examples(vocab: int) -> list[PairExample]:
    rng = np.random.default_rng(0)
    out = []
    for i, (p, c, r) in enumerate([(3, 4, 2), (5, 1, 6), (2, 7, 3)]):
        ids = [tuple(int(t) for t in rng.integers(3, vocab, n)) for n in (p, c, r)]
        out.append(PairExample(id=f"q{i}", prompt_ids=ids[0], chosen_ids=ids[1], rejected_ids=ids[2]))
    return out


@torch.no_grad()
def full_rows(model, prompt, response) -> SequenceLogits:
    """The model's full next-token distribution at every response position, as a service result."""
    seq = torch.tensor([list(prompt) + list(response)])
    logp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)  # (T, V)
    rows = logp[len(prompt) - 1 : seq.shape[1] - 1]  # rows predicting the response tokens
    vocab = rows.shape[1]
    return SequenceLogits(
        row_lengths=np.full(len(response), vocab), top_ids=np.tile(np.arange(vocab), len(response)),
        top_logprobs=rows.reshape(-1).numpy(), token_logprobs=rows[torch.arange(len(response)), torch.tensor(response)].numpy(),
        tail_logprobs=np.full(len(response), -np.inf),
    )  # fmt: skip


@torch.no_grad()
def plain_kl_sum(teacher, student, prompt, response) -> float:
    seq = torch.tensor([list(prompt) + list(response)])
    rows = slice(len(prompt) - 1, seq.shape[1] - 1)
    p = torch.log_softmax(teacher(input_ids=seq).logits[0, rows].double(), -1)
    q = torch.log_softmax(student(input_ids=seq).logits[0, rows].double(), -1)
    return float((p.exp() * (p - q)).sum())


def test_sample_kl_equals_the_full_vocabulary_kl_per_sequence(models):
    teacher, student, _ = models
    pairs = examples(teacher.config.vocab_size)

    def fetch(part):
        return FetchedTeacher(chosen=[full_rows(teacher, e.prompt_ids, e.chosen_ids) for e in part],
                              rejected=[full_rows(teacher, e.prompt_ids, e.rejected_ids) for e in part])  # fmt: skip

    got = sample_kl(student, pairs, fetch, batch_size=2)
    want_t = [plain_kl_sum(teacher, student, e.prompt_ids, e.chosen_ids) for e in pairs]
    want_s = [plain_kl_sum(teacher, student, e.prompt_ids, e.rejected_ids) for e in pairs]
    np.testing.assert_allclose(got["kl_teacher_sum"], want_t, rtol=1e-4)
    np.testing.assert_allclose(got["kl_student_sum"], want_s, rtol=1e-4)
    np.testing.assert_array_equal(got["kl_teacher_tokens"], [len(e.chosen_ids) for e in pairs])
    np.testing.assert_array_equal(got["kl_student_tokens"], [len(e.rejected_ids) for e in pairs])


def test_own_sample_kl_sums_the_full_vocabulary_kl_over_each_querys_own_samples(models):
    teacher, student, _ = models
    rng = np.random.default_rng(3)
    vocab = teacher.config.vocab_size
    prompts = [tuple(int(t) for t in rng.integers(3, vocab, n)) for n in (3, 5, 2)]
    samples = [[[int(t) for t in rng.integers(3, vocab, n)] for n in lens] for lens in ((4, 2), (3,), ())]

    def fetch(part):
        return FetchedTeacher(chosen=[full_rows(teacher, e.prompt_ids, e.chosen_ids) for e in part],
                              rejected=[full_rows(teacher, e.prompt_ids, e.rejected_ids) for e in part])  # fmt: skip

    got = own_sample_kl(student, prompts, samples, fetch, batch_size=2)
    want = [sum(plain_kl_sum(teacher, student, p, s) for s in ss) for p, ss in zip(prompts, samples, strict=True)]
    np.testing.assert_allclose(got["kl_own_sum"], want, rtol=1e-4)  # one sample counted once, none: 0
    np.testing.assert_array_equal(got["kl_own_tokens"], [6, 3, 0])


@torch.no_grad()
def test_pair_scores_compare_summed_logprobs_and_give_the_dpo_margin(models):
    teacher, student, _ = models
    pairs = examples(teacher.config.vocab_size)

    def logp(model, prompt, response):
        seq = torch.tensor([list(prompt) + list(response)])
        lp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        return float(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(response)))

    ref_c = np.array([logp(teacher, e.prompt_ids, e.chosen_ids) for e in pairs], dtype=np.float32)
    ref_r = np.array([logp(teacher, e.prompt_ids, e.rejected_ids) for e in pairs], dtype=np.float32)
    index = {e.id: i for i, e in enumerate(pairs)}

    def fetch(part):
        rows = [index[e.id] for e in part]
        return FetchedTeacher(chosen=[], rejected=[], ref_chosen=ref_c[rows], ref_rejected=ref_r[rows])

    got = pair_scores(student, pairs, fetch, beta=0.5, batch_size=2)
    pc = np.array([logp(student, e.prompt_ids, e.chosen_ids) for e in pairs])
    pr = np.array([logp(student, e.prompt_ids, e.rejected_ids) for e in pairs])
    np.testing.assert_array_equal(got["pref_correct"], (pc > pr).astype(float))
    np.testing.assert_allclose(got["reward_margin"], 0.5 * ((pc - ref_c) - (pr - ref_r)), rtol=1e-4, atol=1e-5)


def test_teacher_logprob_sums_each_answer_and_skips_empty_ones():
    calls = []

    def score(sequences, starts):
        calls.append((sequences, starts))
        return [np.full(len(s) - st, -0.5) for s, st in zip(sequences, starts, strict=True)]

    got = teacher_logprob(score, [[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [], [2]], batch_size=1)
    np.testing.assert_allclose(got["teacher_logprob_sum"], [-1.5, 0.0, -0.5])
    np.testing.assert_array_equal(got["teacher_logprob_tokens"], [3, 0, 1])
    assert calls[0] == ([[1, 2, 7, 8, 9]], [2]) and len(calls) == 2  # the empty answer is never sent


def test_answers_are_cut_after_the_first_eos_and_sampling_is_seeded(models):
    _, student, student_dir = models
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    assert _cut([5, 6, 2, 2, 2], 2) == [5, 6, 2] and _cut([5, 6], 2) == [5, 6]
    prompts = [[5, 6, 7], [8, 9]]
    a = answers(student, tokenizer, prompts, max_new_tokens=4, samples=3, temperature=1.0, seed=3, pad_id=0)
    b = answers(student, tokenizer, prompts, max_new_tokens=4, samples=3, temperature=1.0, seed=3, pad_id=0)
    assert a.sample_text == b.sample_text and len(a.sample_text) == 2 and all(len(s) == 3 for s in a.sample_text)
    assert all(0 < len(g) <= 4 for g in a.greedy_ids)
