"""The demo's data: three disjoint sets of arithmetic queries, and the teacher samples the SFT learns from.

Query sets are streams of `dualdistill.tasks.arithmetic` with their own seeds (ids carry the seed, so
the sets never share an id): `sft` (teacher samples for the SFT step), `train` (the DPD training pairs)
and `eval` (held out: eval pairs and verifier accuracy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualdistill.demo.config import DemoSize
from dualdistill.tasks.arithmetic import make_queries
from dualdistill.trainer.sft import SFTExample

QUERY_SEED_BASE = {"sft": 10_000, "train": 20_000, "eval": 30_000}
GENERATE_CHUNK = 8  # queries per generate request: one request is one batch on the server, and a CPU decoding
# step costs about the same for 2 or 16 rows (it is bound by reading the weights), so bigger is faster


def query_set(role: str, size: DemoSize, seed: int) -> list[dict]:
    """The `role` queries ('sft' | 'train' | 'eval') of a run with this size and seed."""
    count = {"sft": size.sft_queries, "train": size.train_queries, "eval": size.eval_queries}[role]
    return make_queries(count, seed=QUERY_SEED_BASE[role] + seed, difficulty=size.difficulty)


def generate_sft_data(
    generate: Callable[..., list[Any]], size: DemoSize, seed: int, out: Path, progress: bool = True
) -> list[SFTExample]:
    """Teacher samples on the `sft` queries -> `out` (JSONL, written atomically) -> SFT examples.

    generate(prompts, max_new_tokens=, temperature=, n=, seed=) -> completions: the teacher's
    `TeacherClient.generate` with the model bound. Empty completions are skipped.
    """
    queries = query_set("sft", size, seed)
    records: list[dict] = []
    bar = _bar(progress, len(queries), "sft data")
    try:
        for begin in range(0, len(queries), GENERATE_CHUNK):
            part = queries[begin : begin + GENERATE_CHUNK]
            completions = generate(
                [{"messages": q["messages"]} for q in part], max_new_tokens=size.max_new_tokens,
                temperature=size.sft_temperature, n=size.sft_samples, seed=seed + begin,
            )  # fmt: skip
            for completion in completions:
                if completion.token_ids:
                    records.append({
                        "id": part[completion.prompt_index]["id"],
                        "prompt_token_ids": list(completion.prompt_token_ids),
                        "token_ids": list(completion.token_ids),
                        "text": completion.text,
                        "finish_reason": completion.finish_reason,
                    })  # fmt: skip
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    if not records:
        raise RuntimeError("the teacher gave only empty completions for the SFT queries; nothing to train on")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out)
    return [SFTExample.from_record(r) for r in records]


def read_sft_data(path: Path) -> list[SFTExample]:
    with path.open(encoding="utf-8") as handle:
        return [SFTExample.from_record(json.loads(line)) for line in handle if line.strip()]


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query", dynamic_ncols=True)
