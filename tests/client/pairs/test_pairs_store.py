"""Output files: partial trailing lines cut on reopen, ids never written twice, summary and PNG."""

from __future__ import annotations

import json
import math

import pytest

from dualdistill.pairs.store import CorruptOutputError, RunPaths, open_store, truncate_partial_line
from dualdistill.pairs.summary import distribution, format_summary, plot_margins, summarize


def test_sidecar_names(tmp_path):
    paths = RunPaths.for_output(tmp_path / "pairs.jsonl")
    assert paths.dropped.name == "pairs.dropped.jsonl"
    assert paths.summary.name == "pairs.summary.json"
    assert paths.margins_png.name == "pairs.margins.png"
    assert RunPaths.for_output(tmp_path / "out").dropped.name == "out.dropped.jsonl"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", b""),
        (b'{"id": 1}\n', b'{"id": 1}\n'),
        (b'{"id": 1}\n{"id": 2', b'{"id": 1}\n'),
        (b'{"id": 1', b""),
        (b'{"id": 1}\n' + b"x" * 200_000, b'{"id": 1}\n'),  # partial line longer than one scan block
    ],
)
def test_truncate_partial_line(tmp_path, content, expected):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    removed = truncate_partial_line(path)
    assert path.read_bytes() == expected and removed == len(content) - len(expected)


def test_resume_skips_done_ids_and_cuts_partial_line(tmp_path):
    out = tmp_path / "pairs.jsonl"
    with open_store(out) as store:
        store.write_batch([{"id": "a", "margin": 1.0}], [{"id": 2, "reason": "below_margin", "margin": -0.5}])
        store.write_batch([{"id": "c", "margin": math.nan}], [])
    # a crash in the middle of writing the next line
    with open(out, "ab") as handle:
        handle.write(b'{"id": "d", "chosen": "half a li')
    with open_store(out) as store:
        assert store.done == {"a", "2", "c"}
        assert store.truncated_bytes == len(b'{"id": "d", "chosen": "half a li')
        assert [r["id"] for r in store.kept] == ["a", "c"]
        assert store.kept[1]["margin"] is None  # NaN is written as null (strict JSON)
        store.write_batch([{"id": "d"}], [])
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "c", "d"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(CorruptOutputError, match="pairs.jsonl:2"):
        open_store(out)


def test_distribution_hand_computed():
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0, None, math.nan, math.inf])
    assert d["count"] == 5 and d["mean"] == 3.0 and d["p50"] == 3.0 and d["p25"] == 2.0
    assert d["p00"] == 1.0 and d["p100"] == 5.0 and d["p05"] == pytest.approx(1.2)
    assert d["std"] == pytest.approx(math.sqrt(2.0))
    empty = distribution([])
    assert empty["count"] == 0 and empty["p50"] is None


def test_summary_and_png(tmp_path):
    kept = [
        {"id": i, "chosen_score": 1.0, "rejected_score": -1.0 - i, "margin": 2.0 + i,
         "positive_scores": [1.0, 0.5], "negative_scores": [-1.0 - i, None]}
        for i in range(3)
    ]
    dropped = [
        {"id": "x", "reason": "below_margin", "margin": 0.1, "positive_scores": [0.0], "negative_scores": [-0.1]},
        {"id": "y", "reason": "no_valid_positive", "margin": None},
        {"id": "z", "reason": "below_margin", "margin": -0.3},
    ]
    summary = summarize(kept, dropped, settings={"margin": 1.0})
    assert (summary["kept"], summary["dropped"], summary["total"]) == (3, 3, 6)
    assert summary["dropped_by_reason"] == {"below_margin": 2, "no_valid_positive": 1}
    assert summary["keep_rate"] == 0.5
    assert summary["scores"]["margin"]["p50"] == 3.0
    assert summary["scores"]["pair_margin_all"]["count"] == 5
    assert summary["scores"]["positive_samples"]["count"] == 7
    assert summary["scores"]["negative_samples"]["count"] == 4
    assert "kept 3 / 6" in format_summary(summary)
    png = tmp_path / "m.png"
    plot_margins(png, kept, dropped, threshold=1.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    plot_margins(png, [], [], threshold=-math.inf)  # nothing to plot still gives a picture
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
