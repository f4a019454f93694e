"""Reading the queries file: one JSON object per line, checked line by line.

A line is `{"id": str|int, "prompt": str}` or `{"id", "messages": [{"role", "content"}, ...]}` (both may be
given: messages are what the models see, prompt is kept for the output), plus any other keys (e.g.
"answer" for verifiers), which travel with the query to the scorer. A bad line never stops the read: it
becomes a `LineProblem` with its 1-based line number, and the caller decides (skip, or refuse the whole
file in strict mode). Ids are compared as strings, so 7 and "7" are the same id; later duplicates of an
id are problems too (the first one is used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LineProblem:
    line: int  # 1-based line number in the file
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class QueryFile:
    queries: list[dict] = field(default_factory=list)  # valid queries, in file order, ids unique
    problems: list[LineProblem] = field(default_factory=list)  # bad, empty and duplicate lines


def query_key(query: dict) -> str:
    """The id as the string under which outputs, resume and duplicates compare it."""
    return str(query["id"])


def _check_messages(messages: object) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {\"role\", \"content\"} objects"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"messages[{i}] must be an object with exactly the keys 'role' and 'content'"
        if not isinstance(message["role"], str) or not message["role"]:
            return f"messages[{i}].role must be a non-empty string"
        if not isinstance(message["content"], str):
            return f"messages[{i}].content must be a string"
    return None


def check_query(obj: object) -> str | None:
    """Why `obj` is not a valid query, or None when it is."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if "id" not in obj:
        return "missing 'id'"
    qid = obj["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or qid == "":
        return f"'id' must be a non-empty string or an integer, got {qid!r}"
    if "prompt" not in obj and "messages" not in obj:
        return "needs 'prompt' (a string) or 'messages' (a chat)"
    if "prompt" in obj and (not isinstance(obj["prompt"], str) or not obj["prompt"].strip()):
        return "'prompt' must be a non-empty string"
    if "messages" in obj:
        return _check_messages(obj["messages"])
    return None


def parse_queries(lines: list[str]) -> QueryFile:
    """Check every line; see the module docstring for the rules."""
    result = QueryFile()
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            result.problems.append(LineProblem(number, "empty line"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            result.problems.append(LineProblem(number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        why = check_query(obj)
        if why is not None:
            result.problems.append(LineProblem(number, why))
            continue
        key = query_key(obj)
        if key in first_line_of:
            result.problems.append(
                LineProblem(number, f"duplicate id {obj['id']!r} (first on line {first_line_of[key]}); skipped")
            )
            continue
        first_line_of[key] = number
        result.queries.append(obj)
    return result


def read_queries(path: str | Path) -> QueryFile:
    """Read and check a queries JSONL file (UTF-8)."""
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    # Split on "\n" only: str.splitlines() would also split at U+2028 etc., which JSON strings may hold.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return parse_queries(lines)


def write_queries(path: str | Path, queries: list[dict]) -> None:
    """Write queries as JSONL (one object per line, UTF-8, no ASCII escaping)."""
    with open(path, "w", encoding="utf-8") as handle:
        for query in queries:
            handle.write(json.dumps(query, ensure_ascii=False) + "\n")
