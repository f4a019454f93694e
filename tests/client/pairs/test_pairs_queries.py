"""Reading queries: every bad line reported with its number, the good ones kept, duplicates caught."""

from __future__ import annotations

import json

from dualdistill.pairs.queries import parse_queries, read_queries, write_queries


def test_bad_lines_reported_with_line_numbers(tmp_path):
    lines = [
        json.dumps({"id": "a", "prompt": "Hi"}),  # 1 ok
        "",  # 2 empty
        "{not json",  # 3
        json.dumps([1, 2]),  # 4 not an object
        json.dumps({"prompt": "no id"}),  # 5
        json.dumps({"id": "b"}),  # 6 no prompt or messages
        json.dumps({"id": "c", "prompt": "   "}),  # 7 blank prompt
        json.dumps({"id": "d", "messages": [{"role": "user"}]}),  # 8 message without content
        json.dumps({"id": "a", "prompt": "again"}),  # 9 duplicate of line 1
        json.dumps({"id": 7, "messages": [{"role": "user", "content": "x"}], "answer": 3}),  # 10 ok
        json.dumps({"id": "7", "prompt": "same id as line 10 as a string"}),  # 11 duplicate
        json.dumps({"id": True, "prompt": "bool id"}),  # 12
        json.dumps({"id": "e", "prompt": "line\u2028separator inside"}, ensure_ascii=False),  # 13 ok
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = read_queries(path)
    assert [q["id"] for q in result.queries] == ["a", 7, "e"]
    by_line = {p.line: p.message for p in result.problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    assert by_line[2] == "empty line"
    assert by_line[3].startswith("invalid JSON")
    assert "object" in by_line[4]
    assert "missing 'id'" in by_line[5]
    assert "'prompt'" in by_line[6] and "'messages'" in by_line[6]
    assert "messages[0]" in by_line[8]
    assert "duplicate id 'a' (first on line 1)" in by_line[9]
    assert "first on line 10" in by_line[11]
    assert str(result.problems[0]) == "line 2: empty line"


def test_crlf_and_missing_final_newline():
    result = parse_queries(['{"id": 1, "prompt": "a"}\r', '{"id": 2, "prompt": "b"}'])
    assert [q["id"] for q in result.queries] == [1, 2] and not result.problems


def test_write_then_read_round_trip(tmp_path):
    queries = [{"id": f"q{i}", "prompt": f"é {i}", "answer": i} for i in range(3)]
    write_queries(tmp_path / "q.jsonl", queries)
    again = read_queries(tmp_path / "q.jsonl")
    assert again.queries == queries and not again.problems
