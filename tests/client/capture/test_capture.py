"""Offline capture: it stores exactly what the teacher answered, resumes after a crash, refuses what does
not match, and training from it equals training live (bit for bit when the teacher's bits are the same)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dualdistill.cli.main import main
from dualdistill.client import TeacherClient
from dualdistill.protocol import wire
from dualdistill.protocol.params import LogitsParams
from dualdistill.trainer import train
from dualdistill.trainer.capture.run import capture_pairs
from dualdistill.trainer.capture.store import CaptureError, CaptureReader, CaptureWriter
from dualdistill.trainer.data import load_pairs
from dualdistill.trainer.teacher import sequences_of
from tests.client.trainer.fixtures import TEACHER, TOP_K, assert_same_weights, small_config, train_records


@pytest.mark.parametrize("lossless", [True, False])
def test_capture_stores_what_the_teacher_returned(tmp_path, tiny_server, pair_files, lossless):
    pairs = load_pairs(pair_files[0], 1024)
    with TeacherClient(tiny_server.http_url, format="binary-lossless") as client:
        summary = capture_pairs(pair_files[0], client, TEACHER, tmp_path / "cap", params=LogitsParams(top_k=TOP_K), reference_model=TEACHER,
                                lossless=lossless, batch_size=4, depth=1, progress=False)  # fmt: skip
        assert (summary.total, summary.captured, summary.already) == (12, 12, 0)
        reader = CaptureReader(tmp_path / "cap")
        assert reader.settings.params.top_k == TOP_K and reader.settings.lossless is lossless
        assert len(reader) == 12 and reader.settings.teacher_fingerprint == client.model_info(TEACHER).fingerprint
        for begin in range(0, 12, 4):  # the capture's own requests, again: the server answers the same bits
            batch = pairs[begin : begin + 4]
            sequences, starts = sequences_of(batch)
            teacher = client.logits(TEACHER, sequences, starts, top_k=TOP_K)
            reference = client.logits(TEACHER, sequences, starts, top_k=1)
            for i, example in enumerate(batch):
                expected = [teacher[i], teacher[4 + i], reference[i], reference[4 + i]]
                if not lossless:  # what a live client with format "binary" decodes: each response coded alone
                    expected = [*wire.decode(wire.encode(expected[:2])), *wire.decode(wire.encode(expected[2:]))]
                stored = reader.get(example.id, example.digest)
                assert all(a.equals(b) for a, b in zip(stored, expected, strict=True)), example.id
        reader.close()


def test_capture_resumes_after_a_crash(tmp_path, tiny_server, pair_files, capture_dir):
    lines = pair_files[0].read_text().splitlines(keepends=True)
    first_seven = tmp_path / "first-seven.jsonl"
    first_seven.write_text("".join(lines[:7]))
    out = tmp_path / "cap"
    args = ["capture", "--url", tiny_server.http_url, "--teacher-model", TEACHER, "--reference-model", TEACHER,
            "--out", str(out), "--top-k", str(TOP_K), "--batch-size", "3", "--no-progress"]  # fmt: skip
    assert main([*args, "--pairs", str(first_seven)]) == 0
    # what a crash leaves: no index, half a record in the shard, half a line in its sidecar
    (out / "index.json").unlink()
    with pytest.raises(CaptureError, match="not finished"):
        CaptureReader(out)
    complete_bytes = (out / "shard-00000.bin").stat().st_size
    with (out / "shard-00000.bin").open("ab") as shard:
        shard.write(b"\x00" * 100)
    with (out / "shard-00000.jsonl").open("a") as sidecar:
        sidecar.write('{"id": "train-7", "dig')
    assert main([*args, "--pairs", str(pair_files[0])]) == 0

    resumed, reference = CaptureReader(out), CaptureReader(capture_dir)
    assert sorted(resumed.pairs) == sorted(f"train-{i}" for i in range(12))
    assert (out / "shard-00000.bin").stat().st_size == sum(e["length"] for e in resumed.pairs.values())
    assert resumed.pairs["train-0"]["offset"] == 0 and complete_bytes in {e["offset"] for e in resumed.pairs.values()}
    for example in load_pairs(pair_files[0], 1024):
        # the session capture fetched in other batches: same rows up to float32 rounding of the forward
        for a, b in zip(resumed.get(example.id, example.digest), reference.get(example.id), strict=True):
            assert (a.row_lengths == b.row_lengths).all() and (a.top_ids == b.top_ids).all()
            assert abs(a.token_logprobs - b.token_logprobs).max() < 1e-4
    resumed.close()
    reference.close()
    with pytest.raises(CaptureError, match="other settings"):
        CaptureWriter(out, replace(resumed.settings, params=LogitsParams(top_k=TOP_K + 1)))


def test_training_refuses_a_capture_that_does_not_match(tmp_path, capture_dir, student_dir, pair_files):
    url = f"capture:{capture_dir}"
    with pytest.raises(ValueError, match="top_k: capture 8, config 4"):
        train(small_config(tmp_path / "a", student_dir, pair_files[0], url, top_k=4))
    with pytest.raises(ValueError, match="reference_model: capture 'tiny', config 'sft'"):
        train(small_config(tmp_path / "b", student_dir, pair_files[0], url, reference="served:sft"))
    changed = tmp_path / "changed.jsonl"  # same ids, other token ids
    records = [json.loads(line) for line in pair_files[0].read_text().splitlines()]
    for record in records:
        record["rejected_token_ids"] = record["rejected_token_ids"][:-1]
    changed.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(CaptureError, match="digest mismatch"):
        train(small_config(tmp_path / "c", student_dir, changed, url, max_steps=1))


@pytest.mark.parametrize("lossless", [True, False])
def test_training_from_a_capture_equals_training_live(tmp_path, tiny_server, student_dir, pair_files, lossless):
    """One pair per request on both sides (capture batch 1, train batch 1, prefetch depth 1): the service
    then computes every request alone, gives the same bits both times, and the runs must be identical."""
    four = tmp_path / "four.jsonl"  # one step per pair below: keep it short
    four.write_text("".join(pair_files[0].read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "cap"
    args = ["capture", "--pairs", str(four), "--url", tiny_server.http_url, "--teacher-model", TEACHER,
            "--reference-model", TEACHER, "--out", str(out), "--top-k", str(TOP_K), "--batch-size", "1",
            "--depth", "1", "--no-progress"] + ([] if lossless else ["--lossy"])  # fmt: skip
    assert main(args) == 0
    common = dict(batch_size=1, prefetch_depth=1, max_steps=4, teacher_format="binary-lossless" if lossless else "binary")
    live = train(small_config(tmp_path / "live", student_dir, four, tiny_server.http_url, **common))
    offline = train(small_config(tmp_path / "offline", student_dir, four, f"capture:{out}", **common))
    assert_same_weights(live.model_dir, offline.model_dir)
    a, b = train_records(tmp_path / "live"), train_records(tmp_path / "offline")
    assert [r["example_ids"] for r in a] == [r["example_ids"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
