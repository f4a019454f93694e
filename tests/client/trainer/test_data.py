"""The data order and its split into ranks and micro-batches: every example exactly once per epoch,
rank shards disjoint, a resumed iteration continuing exactly where the saved position says."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from dualdistill.trainer.data import Geometry, collate, iterate_micro_batches, load_pairs, parse_pair


def _epochs(n, geometry, epochs=2, seed=3):
    """{(epoch, rank): [indices trained on]} and the micro-batches of every rank."""
    seen, batches = {}, {}
    for rank in range(geometry.world_size):
        batches[rank] = list(iterate_micro_batches(n, geometry, rank, seed, epochs))
        for mb in batches[rank]:
            if not mb.filler:
                seen.setdefault((mb.epoch, rank), []).extend(mb.indices)
    return seen, batches


@pytest.mark.parametrize("n, batch, world, accum", [(12, 2, 1, 1), (13, 2, 2, 2), (7, 3, 3, 1), (5, 4, 2, 3)])
def test_every_example_once_per_epoch_and_rank_shards_disjoint(n, batch, world, accum):
    geometry = Geometry(batch, world, accum)
    seen, batches = _epochs(n, geometry)
    for epoch in range(2):
        shards = [seen.get((epoch, rank), []) for rank in range(world)]
        union = list(itertools.chain.from_iterable(shards))
        assert sorted(union) == list(range(n))  # all, each exactly once
    # every rank walks the same steps and micro-batches, so DDP's all-reduces line up
    shapes = {rank: [(mb.step, mb.micro, mb.num_micro) for mb in mbs] for rank, mbs in batches.items()}
    assert all(shape == shapes[0] for shape in shapes.values())
    assert shapes[0][-1][0] == 2 * geometry.steps_per_epoch(n)
    for mb in batches[0]:
        sizes = [len(r) for r in mb.rank_indices]
        assert max(sizes) - min(sizes) <= 1  # strided split: balanced
        assert mb.step_examples <= geometry.per_step


def test_order_is_seeded_and_differs_per_epoch():
    geometry = Geometry(4, 1, 1)
    first = [mb.indices for mb in iterate_micro_batches(16, geometry, 0, seed=1, epochs=2)]
    again = [mb.indices for mb in iterate_micro_batches(16, geometry, 0, seed=1, epochs=2)]
    other = [mb.indices for mb in iterate_micro_batches(16, geometry, 0, seed=2, epochs=2)]
    assert first == again and first != other
    assert first[:4] != first[4:]  # epoch 1 is another permutation


def test_resumed_iteration_continues_at_the_saved_position():
    geometry = Geometry(2, 2, 2)
    full = list(iterate_micro_batches(11, geometry, 1, seed=0, epochs=3))
    for cut in range(1, len(full)):
        last = full[cut - 1]
        if last.micro != last.num_micro - 1:
            continue  # checkpoints are taken at step ends only
        epoch, position = last.epoch, last.end_position
        if position >= 11:
            epoch, position = epoch + 1, 0
        rest = list(iterate_micro_batches(11, geometry, 1, 0, 3, epoch, position, last.step))
        assert rest == full[cut:]


def test_max_steps_stops_mid_epoch():
    batches = list(iterate_micro_batches(20, Geometry(2, 1, 2), 0, seed=0, epochs=5, max_steps=3))
    assert [mb.step for mb in batches] == [1, 1, 2, 2, 3, 3]


def test_filler_keeps_ranks_in_step_with_zero_examples():
    # 5 examples, 4 ranks x 1: the second step has one example, three ranks get a filler
    geometry = Geometry(1, 4, 1)
    rank3 = list(iterate_micro_batches(5, geometry, 3, seed=0, epochs=1))
    assert [mb.filler for mb in rank3] == [False, True]
    assert rank3[1].indices == rank3[1].rank_indices[0]  # the filler repeats rank 0's example


def _line(**overrides):
    line = {"id": "p", "prompt_token_ids": [1, 2, 3], "chosen_token_ids": [4, 5, 6],
            "rejected_token_ids": [7, 8]}  # fmt: skip
    line.update(overrides)
    return line


def test_collate_lays_out_chosen_then_rejected_with_response_masks():
    a = parse_pair(_line(id="a"), 64, "t")
    b = parse_pair(_line(id="b", prompt_token_ids=[9], rejected_token_ids=[10, 11, 12, 13]), 64, "t")
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 4, 5, 6], [9, 4, 5, 6, 0, 0], [1, 2, 3, 7, 8, 0], [9, 10, 11, 12, 13, 0],
    ]  # fmt: skip
    assert batch.response_mask.int().tolist() == [
        [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 0],
    ]  # fmt: skip
    assert torch.equal(batch.attention_mask, (batch.input_ids != 0).long())
    assert batch.starts == [3, 1, 3, 1]


def test_long_responses_are_cut_to_max_seq_len_and_bad_pairs_refused(tmp_path):
    cut = parse_pair(_line(), 5, "t")
    assert cut.chosen_ids == (4, 5) and cut.rejected_ids == (7, 8)
    assert cut.digest == parse_pair(_line(), 64, "t").digest  # the digest is of the uncut pair
    with pytest.raises(ValueError, match="no room for a response"):
        parse_pair(_line(), 3, "t")
    with pytest.raises(ValueError, match="empty response"):
        parse_pair(_line(chosen_token_ids=[]), 64, "t")
    with pytest.raises(ValueError, match="precomputed"):
        parse_pair(_line(ref_chosen_logps=-1.0, ref_rejected_logps=-2.0), 5, "t")
    with pytest.raises(ValueError, match="prompt_token_ids"):
        parse_pair({"id": "x", "chosen_token_ids": [], "rejected_token_ids": []}, 64, "t")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_line(id="same")) + "\n" + json.dumps(_line(id="same")) + "\n")
    with pytest.raises(ValueError, match="duplicate pair id 'same'"):
        load_pairs(path, 64)


def test_query_extra_fields_reach_the_verifier_record():
    pair = parse_pair(_line(query_extra={"answer": 42, "id": "not-this"}), 64, "t")
    assert pair.record["answer"] == 42
    assert pair.record["id"] == "p"  # a pair field is never overwritten by the query's extras


def test_score_gap_is_chosen_minus_rejected_score_and_named_when_missing():
    pair = parse_pair(_line(id="a", chosen_score=1.0, rejected_score=0.25), 64, "t")
    assert pair.score_gap == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no chosen_score / rejected_score"):
        _ = parse_pair(_line(id="b"), 64, "t").score_gap
