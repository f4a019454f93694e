"""Pair generation and the pair-wise preference filter (`dualdistill pairs`); docs/pairs.md is the guide.

    queries.jsonl --> teacher samples (positives) + student samples (negatives)
                  --> Scorer (teacher-logprob | verifier:M:F | reward-model:PATH)
                  --> choose_pair (best-worst | best-best | random; margin, min_score)
                  --> pairs.jsonl + pairs.dropped.jsonl + pairs.summary.json + pairs.margins.png

Modules: queries (input checks), sources (where samples come from), scorers (+ reward_model),
select (the filter, pure), store (resumable output), summary, pipeline (the async loop), run (entry).
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports load on first use, so `dualdistill --help` (which reads PairsConfig) imports no client stack.
_EXPORTS = {
    "PairsConfig": "config",
    "PairsRunAborted": "pipeline",
    "QueryFile": "queries",
    "read_queries": "queries",
    "write_queries": "queries",
    "PairsResult": "run",
    "arun_pairs": "run",
    "run_pairs": "run",
    "Scorer": "scorer_base",
    "ScorerSpecError": "scorers",
    "make_scorer": "scorers",
    "Decision": "select",
    "choose_pair": "select",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dualdistill.pairs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dualdistill.pairs.{_EXPORTS[name]}"), name)
