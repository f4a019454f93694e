"""Prompt logprobs as numpy arrays from vLLM's tensors (engines/vllm/prompt_logprobs.py) give the same rows,
bit for bit, as vLLM's FlatLogprobs Python lists of the same engine output, converted the old way.

`prompt_logprobs="both"` keeps the tensors for us and lets vLLM's output processor build its lists too, so
both conversions read one and the same engine output. The reference below is an independent plain
per-position implementation over the FlatLogprobs lists (what the engine did before the arrays).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dualdistill_server.engines.vllm.logits import (
    fetched_ranks,
    prompt_logprob_params,
    sequence_logits,
    tail_logprobs,
)
from dualdistill_server.engines.vllm.prompt_logprobs import PromptLogprobArrays
from tests.server.engines.conftest import requires_vllm
from tests.server.models.helpers import make_task, random_ids

pytestmark = requires_vllm


def _submit(model, task, how: str):
    from vllm.inputs import TokensPrompt

    params = prompt_logprob_params(fetched_ranks(task.params.top_k, model.info.vocab_size))
    return model._loop.submit(TokensPrompt(prompt_token_ids=task.token_ids.tolist()), params, prompt_logprobs=how)


def _reference_rows(flat, task, vocab: int):
    """Per position, from the flat lists: (top ids, top logprobs) sorted by (logprob desc, id asc), the token's
    logprob, its rank, and the tail from the same `tail_logprobs` formula (tested on its own elsewhere)."""
    k = task.params.top_k
    top_ids, top_values, token, ranks, ranked = [], [], [], [], []
    for position in range(task.start, len(task.token_ids)):
        begin, end = flat.start_indices[position], flat.end_indices[position]
        ids, values = flat.token_ids[begin:end], flat.logprobs[begin:end]
        assert ids[0] == task.token_ids[position]
        pairs = sorted(zip(ids[1 : k + 1], values[1 : k + 1], strict=True), key=lambda p: (-p[1], p[0]))
        top_ids.append([i for i, _ in pairs])
        top_values.append([v for _, v in pairs])
        token.append(values[0])
        ranks.append(flat.ranks[begin])
        ranked.append(values[1:])
    tail = tail_logprobs(np.asarray(ranked, dtype=np.float32), k, vocab)
    return (np.asarray(top_ids), np.asarray(top_values, dtype=np.float32), np.asarray(token, dtype=np.float32),
            tail, np.asarray(ranks))


def _tasks(vocab: int):
    rng = np.random.default_rng(5)
    shapes = [(2, 1, 1), (9, 1, 5), (40, 7, 20), (120, 60, 64), (200, 1, 33)]
    tasks = [make_task(random_ids(rng, n, vocab), start, top_k=k) for n, start, k in shapes]
    tasks.append(dataclasses.replace(make_task([1, 5, 5, 5, 5, 6, 7, 8], 2, top_k=64), token_ranks=True))
    return tasks


def test_arrays_from_the_tensors_equal_the_flat_lists_of_the_same_output(vllm_tiny) -> None:
    vocab = vllm_tiny.info.vocab_size
    tasks = _tasks(vocab)
    futures = [_submit(vllm_tiny, task, "both") for task in tasks]
    for future, task in zip(futures, tasks, strict=True):
        finished = future.result(timeout=120)
        arrays, flat = finished.prompt_logprobs, finished.output.prompt_logprobs
        assert arrays is not None and arrays.positions == len(task.token_ids) - 1
        width = 1 + fetched_ranks(task.params.top_k, vocab)
        from_flat = PromptLogprobArrays.from_flat(flat, width)
        np.testing.assert_array_equal(arrays.token_ids, from_flat.token_ids)
        assert arrays.logprobs.tobytes() == from_flat.logprobs.tobytes()  # the same float32 bits
        np.testing.assert_array_equal(arrays.token_ranks, from_flat.token_ranks)

        ours = sequence_logits(arrays, task, vocab)
        ids, values, token, tail, ranks = _reference_rows(flat, task, vocab)
        assert (ours.top_ids.reshape(ids.shape) == ids).all()
        assert ours.top_logprobs.tobytes() == values.reshape(-1).tobytes()
        assert ours.token_logprobs.tobytes() == token.tobytes()
        assert ours.tail_logprobs.tobytes() == tail.astype(ours.tail_logprobs.dtype).tobytes()
        if task.token_ranks:
            np.testing.assert_array_equal(ours.token_ranks, ranks)


def test_tapped_requests_skip_vllms_lists_and_the_flat_path_still_works(vllm_tiny) -> None:
    vocab = vllm_tiny.info.vocab_size
    task = _tasks(vocab)[2]
    finished = _submit(vllm_tiny, task, "arrays").result(timeout=120)
    assert len(finished.output.prompt_logprobs) == 1  # position 0's empty entry: no per-position objects made
    assert len(finished.output.prompt_logprobs.token_ids) == 0
    assert finished.prompt_logprobs.positions == len(task.token_ids) - 1

    untapped = _submit(vllm_tiny, task, "flat").result(timeout=120)
    assert untapped.prompt_logprobs is None and len(untapped.output.prompt_logprobs) == len(task.token_ids)

    (arrays_row,) = vllm_tiny.compute_logits([task])
    vllm_tiny.prompt_logprobs_as = "flat"  # the model's fallback where the tap cannot apply
    try:
        (flat_row,) = vllm_tiny.compute_logits([task])
    finally:
        vllm_tiny.prompt_logprobs_as = "arrays"
    for field in ("top_ids", "top_logprobs", "token_logprobs", "tail_logprobs", "row_lengths"):
        np.testing.assert_array_equal(getattr(arrays_row, field), getattr(flat_row, field), err_msg=field)


def test_a_shape_mismatch_is_an_error_not_wrong_rows(vllm_tiny) -> None:
    vocab = vllm_tiny.info.vocab_size
    task = _tasks(vocab)[2]
    arrays = _submit(vllm_tiny, task, "arrays").result(timeout=120).prompt_logprobs
    with pytest.raises(RuntimeError, match="expected"):
        sequence_logits(arrays, dataclasses.replace(task, token_ids=task.token_ids[:-1]), vocab)
    shifted = dataclasses.replace(task, token_ids=np.roll(task.token_ids, 1))
    with pytest.raises(RuntimeError, match="not those of the sequence"):
        sequence_logits(arrays, shifted, vocab)
