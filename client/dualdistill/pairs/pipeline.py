"""The pairs run: per query, sample both sides, score, filter, write; C queries in flight.

    for each query q not yet in the output files (any order, C at a time):
        positives = teacher.generate(prompt(q), n, seed = h(seed, id, "teacher"))
        negatives = student.generate(positives[0].prompt_token_ids, n, seed = h(seed, id, "student"))
        s+, s-    = scorer(q, positives), scorer(q, negatives)
        decision  = choose_pair(s+, s-, margin, min_score, pick)   -> kept line | dropped line

The negatives are generated from the teacher's prompt token ids, so both sides of a pair continue the
exact same tokens (the student must share the teacher's tokenizer; `check_same_tokenizer`). Seeds are a
hash of (seed, id), so a query's samples do not depend on concurrency, order or resuming.

Failures: a request the service rejects as invalid for this query (INVALID_ARGUMENT on a prompt or
sequence, e.g. longer than max_seq_len) drops the query with reason "service_rejected". Anything else
that survives the client's retries (the service down, auth, unknown model) stops the run after writing
every finished query: `PairsRunAborted` says how far it got, and the same command resumes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from dualdistill.client.errors import TeacherServiceError, TokenizerMismatchError
from dualdistill.client.types import Completion
from dualdistill.pairs.config import PairsConfig
from dualdistill.pairs.queries import query_key
from dualdistill.pairs.scorer_base import Scorer
from dualdistill.pairs.select import Decision, choose_pair
from dualdistill.pairs.store import PairsStore

QUERY_FIELDS = ("id", "prompt", "messages")  # copied to the output as is; other keys go to "query_extra"


class PairsRunAborted(RuntimeError):
    """The run stopped early (service unreachable, ...); finished queries are written, rerun to resume."""


def query_seed(seed: int, key: str, role: str) -> int:
    """A 63-bit seed from (base seed, query id, role): stable across runs, machines and orders."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def model_prompt(query: dict, chat: bool) -> str | list[dict]:
    """What the teacher is sent: the query's messages; else its prompt, as a user message if `chat`."""
    if "messages" in query:
        return [dict(m) for m in query["messages"]]
    if chat:
        return [{"role": "user", "content": query["prompt"]}]
    return query["prompt"]


def check_same_tokenizer(teacher: Any, student: Any) -> None:
    """Refuse a student whose tokenizer differs from the teacher's: the pair shares one prompt's ids."""
    if teacher.tokenizer_sha256 and student.tokenizer_sha256 and teacher.tokenizer_sha256 != student.tokenizer_sha256:
        raise TokenizerMismatchError(
            f"student {student.name!r} has tokenizer {student.tokenizer_sha256[:12]}.., the teacher "
            f"{teacher.name!r} has {teacher.tokenizer_sha256[:12]}..; pairs need one tokenizer for both sides"
        )


@dataclass(frozen=True)
class RunInfo:
    """What every output line records about the run's components."""

    teacher_model: str
    teacher_fingerprint: str
    student_model: str
    student_fingerprint: str
    scorer: str
    pick: str

    def fields(self) -> dict:
        return dict(self.__dict__)


def _query_part(query: dict) -> dict:
    part = {k: query[k] for k in QUERY_FIELDS if k in query}
    extra = {k: v for k, v in query.items() if k not in QUERY_FIELDS}
    if extra:
        part["query_extra"] = extra
    return part


def make_record(
    query: dict,
    positives: list[Completion],
    negatives: list[Completion],
    pos_scores: list[float],
    neg_scores: list[float],
    decision: Decision,
    info: RunInfo,
) -> dict:
    """The output line of a query: a pair when kept, else a dropped line with its reason."""
    record = _query_part(query)
    if decision.kept:
        chosen, rejected = positives[decision.positive], negatives[decision.negative]
        record.update(
            prompt_token_ids=list(chosen.prompt_token_ids),
            chosen=chosen.text,
            chosen_token_ids=list(chosen.token_ids),
            chosen_finish_reason=chosen.finish_reason,
            rejected=rejected.text,
            rejected_token_ids=list(rejected.token_ids),
            rejected_finish_reason=rejected.finish_reason,
        )
    else:
        record["reason"] = decision.reason
    record.update(
        chosen_score=None if decision.positive is None else pos_scores[decision.positive],
        rejected_score=None if decision.negative is None else neg_scores[decision.negative],
        margin=decision.margin,
        positive_scores=list(pos_scores),
        negative_scores=list(neg_scores),
        **info.fields(),
    )
    return record


async def process_query(
    query: dict, teacher: Any, student: Any, scorer: Scorer, config: PairsConfig, info: RunInfo
) -> tuple[bool, dict]:
    """(kept, record) for one query; see the module docstring."""
    key = query_key(query)
    sampling = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p}
    try:
        positives = await teacher.agenerate(
            model_prompt(query, config.chat), config.samples, seed=query_seed(config.seed, key, "teacher"), **sampling
        )
        negatives = await student.agenerate(
            list(positives[0].prompt_token_ids), config.samples, seed=query_seed(config.seed, key, "student"),
            **sampling,
        )
        pos_scores, neg_scores = await asyncio.gather(scorer.ascore(query, positives), scorer.ascore(query, negatives))
    except TeacherServiceError as error:
        if error.code == "INVALID_ARGUMENT" and (error.field or "").startswith(("prompts", "sequences")):
            record = _query_part(query)
            record.update(reason="service_rejected", detail=str(error), margin=None, **info.fields())
            return False, record
        raise
    decision = choose_pair(
        pos_scores,
        neg_scores,
        [len(c.token_ids) for c in positives],
        [len(c.token_ids) for c in negatives],
        margin=config.margin,
        min_score=config.min_score,
        pick=config.pick,
        rng=random.Random(query_seed(config.seed, key, "pick")),
    )
    return decision.kept, make_record(query, positives, negatives, pos_scores, neg_scores, decision, info)


@dataclass
class RunStats:
    todo: int = 0  # queries this run had to do
    skipped: int = 0  # already in the output files (resumed)
    kept: int = 0
    dropped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = (self.kept + self.dropped) / self.seconds if self.seconds > 0 else None
        return {**self.__dict__, "queries_per_second": rate}


async def run_queries(
    queries: list[dict],
    store: PairsStore,
    teacher: Any,
    student: Any,
    scorer: Scorer,
    config: PairsConfig,
    *,
    progress: bool = True,
) -> RunStats:
    """Process every query not in `store.done`, `config.concurrency` at a time; finished queries are written
    in batches (whatever completed together), so an abort loses only queries still in flight."""
    from tqdm.auto import tqdm

    check_same_tokenizer(teacher, student)
    info = RunInfo(teacher.name, teacher.fingerprint, student.name, student.fingerprint, scorer.name, config.pick)
    done = store.done
    todo = [q for q in queries if query_key(q) not in done]
    stats = RunStats(todo=len(todo), skipped=len(queries) - len(todo))
    pending, running = iter(todo), set()
    bar = tqdm(total=len(todo), desc="pairs", unit="query", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    try:
        while True:
            while len(running) < config.concurrency and (query := next(pending, None)) is not None:
                running.add(asyncio.create_task(process_query(query, teacher, student, scorer, config, info)))
            if not running:
                break
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            kept, dropped, failure = [], [], None
            for task in finished:
                if task.exception() is not None:
                    failure = failure or task.exception()
                    continue
                is_kept, record = task.result()
                (kept if is_kept else dropped).append(record)
            store.write_batch(kept, dropped)
            stats.kept += len(kept)
            stats.dropped += len(dropped)
            bar.update(len(kept) + len(dropped))
            bar.set_postfix(kept=stats.kept, dropped=stats.dropped, refresh=False)
            if isinstance(failure, TeacherServiceError):
                raise _aborted(failure, stats) from failure
            if failure is not None:
                raise failure  # a bug or a scorer error: surface it as it is
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        bar.close()
        stats.seconds = time.perf_counter() - started
    return stats


def _aborted(failure: TeacherServiceError, stats: RunStats) -> PairsRunAborted:
    done = stats.kept + stats.dropped
    return PairsRunAborted(
        f"stopped after {done} of {stats.todo} queries: {failure}. Finished queries are saved; "
        "rerun the same command to resume once the service is back."
    )
