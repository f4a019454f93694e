"""`run_pairs`: the library entry point of `dualdistill pairs` (the CLI only parses flags and prints).

It connects to the service, looks up the teacher (and the served student), loads a local student or a
reward model when asked, opens the output files (resuming what is there), runs the queries and writes the
summary JSON and margins PNG, also when the run aborts, so a partial run is summarized too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualdistill.pairs.config import PairsConfig
from dualdistill.pairs.pipeline import RunStats, run_queries
from dualdistill.pairs.queries import check_query, query_key
from dualdistill.pairs.scorers import make_scorer
from dualdistill.pairs.sources import LocalSource, ServedSource
from dualdistill.pairs.store import RunPaths, json_safe, open_store
from dualdistill.pairs.summary import plot_margins, summarize, write_summary


@dataclass
class PairsResult:
    paths: RunPaths  # where everything was written
    stats: RunStats  # this run only
    summary: dict  # over the files (earlier runs included); also written to paths.summary


def _check_queries(queries: list[dict]) -> None:
    seen: set[str] = set()
    for index, query in enumerate(queries):
        why = check_query(query)
        if why is not None:
            raise ValueError(f"queries[{index}]: {why}")
        key = query_key(query)
        if key in seen:
            raise ValueError(f"queries[{index}]: duplicate id {query['id']!r}")
        seen.add(key)


async def arun_pairs(
    queries: list[dict],
    out: str | Path,
    config: PairsConfig,
    *,
    url: str,
    api_key: str | None = None,
    transport: str | None = None,
    timeout: float = 600.0,
    retries: Any = None,
    on_retry: Any = None,
    progress: bool = True,
    run_info: dict | None = None,
) -> PairsResult:
    """Build pairs for `queries` into `out` (see the package docstring); the asyncio form of `run_pairs`.

    retries: a `dualdistill.client.RetryPolicy` (default: the client's); on_retry(n, error, delay) is
    called before each retry's sleep. run_info: extra facts for the summary's "run" section (the CLI
    passes the queries file and its bad-line count).
    """
    from dualdistill.client import AsyncTeacherClient

    _check_queries(queries)
    client = AsyncTeacherClient(
        url, api_key=api_key, transport=transport, timeout=timeout, retries=retries, on_retry=on_retry
    )
    scorer = student = store = None
    stats = RunStats()
    try:
        teacher = ServedSource(client, await client.model_info(config.teacher_model))
        if config.student_model is not None:
            student = ServedSource(client, await client.model_info(config.student_model))
        else:
            student = await asyncio.to_thread(LocalSource, config.student_dir, config.device)
        scorer = make_scorer(config.scorer, client=client, teacher_model=config.teacher_model, device=config.device)
        store = open_store(out)
        stats = await run_queries(queries, store, teacher, student, scorer, config, progress=progress)
    finally:
        summary = None
        if store is not None:
            store.close()
            summary = summarize(
                store.kept, store.dropped, settings=json_safe(config.settings()),
                run={**stats.as_dict(), "truncated_bytes": store.truncated_bytes, **(run_info or {})},
            )
            write_summary(store.paths.summary, summary)
            plot_margins(store.paths.margins_png, store.kept, store.dropped, config.margin)
        if scorer is not None:
            scorer.close()
        await client.close()
    return PairsResult(store.paths, stats, summary)


def run_pairs(queries: list[dict], out: str | Path, config: PairsConfig, **kwargs: Any) -> PairsResult:
    """Blocking wrapper of `arun_pairs` (same arguments); call it outside a running event loop."""
    return asyncio.run(arun_pairs(queries, out, config, **kwargs))
