"""`dualdistill pairs`: build DPD preference pairs (teacher positives vs student negatives) from queries.

    dualdistill pairs --queries q.jsonl --out pairs.jsonl --url http://localhost:8000 \\
        --teacher-model teacher --student-model student --samples 4 --scorer teacher-logprob --margin 0.5

    dualdistill pairs --make-queries 200 --seed 0 --queries-out q.jsonl     # the arithmetic task only
    (add --out/--url/... to build pairs from the queries just written)

Exit status: 0 done; 2 bad input or settings (nothing was run); 3 the service failed or stayed down
(finished queries are saved: rerun the same command to resume). docs/pairs.md is the guide.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

MAX_PROBLEMS_SHOWN = 20
EXIT_BAD_INPUT, EXIT_SERVICE = 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dualdistill.pairs.config import PairsConfig  # light: dataclasses only

    h = PairsConfig.help
    parser = subparsers.add_parser(
        "pairs",
        help="sample teacher/student pairs and keep those the preference filter accepts",
        description="Sample positives from the teacher and negatives from the student SFT model, score "
        "them, and write the pairs that pass the margin filter (resumable).",
    )
    io = parser.add_argument_group("files")
    io.add_argument("--queries", metavar="Q.jsonl", help='queries, one {"id", "prompt"|"messages"} per line')
    io.add_argument("--out", metavar="PAIRS.jsonl", help="kept pairs; sidecars .dropped.jsonl, .summary.json, "
                    ".margins.png go next to it")
    io.add_argument("--strict", action="store_true", help="refuse a queries file with any bad line (default: skip)")
    io.add_argument("--make-queries", type=int, metavar="N", help="write N arithmetic queries to --queries-out")
    io.add_argument("--queries-out", metavar="Q.jsonl", help="where --make-queries writes")
    io.add_argument("--difficulty", type=int, default=1, help="--make-queries difficulty 1..3 (default 1)")
    svc = parser.add_argument_group("service")
    svc.add_argument("--url", help="http://host:port (HTTP) or host:port (gRPC)")
    svc.add_argument("--transport", choices=("http", "grpc", "openai"), help="default: inferred from --url")
    svc.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    svc.add_argument("--timeout", type=float, default=600.0,
                     help="seconds per request attempt; generation is slow on CPUs (default 600)")
    svc.add_argument("--max-attempts", type=int, default=10,
                     help="attempts per request before the run stops, retries with backoff (default 10)")
    run = parser.add_argument_group("sampling and filtering")
    run.add_argument("--teacher-model", help=h("teacher_model"))
    student = run.add_mutually_exclusive_group()
    student.add_argument("--student-model", help=h("student_model"))
    student.add_argument("--student-dir", help=h("student_dir"))
    run.add_argument("--samples", type=int, default=4, help=h("samples") + " (default 4)")
    run.add_argument("--scorer", default="teacher-logprob", help=h("scorer") + " (default teacher-logprob)")
    run.add_argument("--margin", type=float, default=0.0, help=h("margin") + " (default 0)")
    run.add_argument("--min-score", type=float, default=-math.inf, help=h("min_score") + " (default -inf)")
    run.add_argument("--pick", default="best-worst", help=h("pick") + " (default best-worst)")
    run.add_argument("--concurrency", type=int, default=4, help=h("concurrency") + " (default 4)")
    run.add_argument("--seed", type=int, default=0, help=h("seed") + " (default 0)")
    run.add_argument("--max-new-tokens", type=int, default=64, help=h("max_new_tokens") + " (default 64)")
    run.add_argument("--temperature", type=float, default=1.0, help=h("temperature") + " (default 1)")
    run.add_argument("--top-p", type=float, default=1.0, help=h("top_p") + " (default 1)")
    run.add_argument("--chat", action="store_true", help=h("chat"))
    run.add_argument("--device", default="cpu", help=h("device") + " (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _make_queries(args: argparse.Namespace) -> int:
    from dualdistill.pairs.queries import write_queries
    from dualdistill.tasks.arithmetic import make_queries

    if not args.queries_out:
        return _fail("--make-queries needs --queries-out FILE")
    try:
        queries = make_queries(args.make_queries, seed=args.seed, difficulty=args.difficulty)
    except ValueError as exc:
        return _fail(str(exc))
    write_queries(args.queries_out, queries)
    print(f"wrote {len(queries)} arithmetic queries (difficulty {args.difficulty}, seed {args.seed}) "
          f"to {args.queries_out}")
    return 0


def _report_problems(path: str, problems: list) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"{path}: {problem}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"{path}: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)


def _print_retry(retry: int, error: Any, delay: float) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"service: {error.code}: {error.message}; retry {retry} in {delay:.1f} s", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.make_queries is not None:
        code = _make_queries(args)
        if code or not args.out:
            return code
        args.queries = args.queries_out
    missing = [flag for flag, value in (("--queries", args.queries), ("--out", args.out), ("--url", args.url),
                                        ("--teacher-model", args.teacher_model)) if not value]
    if missing:
        return _fail(f"missing {', '.join(missing)}")
    if not (args.student_model or args.student_dir):
        return _fail("give the negatives' model: --student-model NAME (served) or --student-dir DIR (local)")
    return build(args)


def build(args: argparse.Namespace) -> int:
    from dualdistill.client import RetryPolicy, TeacherServiceError, TokenizerMismatchError
    from dualdistill.pairs import PairsConfig, PairsRunAborted, ScorerSpecError, read_queries, run_pairs
    from dualdistill.pairs.summary import format_summary

    try:
        config = PairsConfig(
            teacher_model=args.teacher_model, student_model=args.student_model, student_dir=args.student_dir,
            samples=args.samples, scorer=args.scorer, margin=args.margin, min_score=args.min_score,
            pick=args.pick, concurrency=args.concurrency, seed=args.seed, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, chat=args.chat, device=args.device,
        )
        retries = RetryPolicy(max_attempts=args.max_attempts)
    except ValueError as exc:
        return _fail(str(exc))
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        return _fail(f"environment variable {args.api_key_env} is not set")
    try:
        queries = read_queries(args.queries)
    except OSError as exc:
        return _fail(f"cannot read queries: {exc}")
    _report_problems(args.queries, queries.problems)
    if queries.problems and args.strict:
        return _fail(f"{len(queries.problems)} bad line(s) in {args.queries} and --strict is set; nothing was run")
    if not queries.queries:
        return _fail(f"no valid queries in {args.queries}")
    try:
        result = run_pairs(
            queries.queries, args.out, config, url=args.url, api_key=api_key, transport=args.transport,
            timeout=args.timeout, retries=retries, on_retry=_print_retry, progress=not args.no_progress,
            run_info={"queries_file": str(args.queries), "bad_lines": len(queries.problems)},
        )
    except ScorerSpecError as exc:
        return _fail(str(exc))
    except PairsRunAborted as exc:
        from dualdistill.pairs.store import RunPaths

        print(f"error: {exc}", file=sys.stderr)
        print(f"summary so far: {RunPaths.for_output(args.out).summary}", file=sys.stderr)
        return EXIT_SERVICE
    except TeacherServiceError as exc:  # before any query ran: models lookup, service unreachable
        code = EXIT_BAD_INPUT if exc.code in ("NOT_FOUND", "INVALID_ARGUMENT", "UNAUTHENTICATED") else EXIT_SERVICE
        return _fail(f"teacher service at {args.url}: {exc}", code)
    except TokenizerMismatchError as exc:  # the student's tokenizer is not the teacher's
        return _fail(str(exc))
    except OSError as exc:  # a --student-dir or reward model that cannot be loaded, an unwritable --out
        return _fail(f"{type(exc).__name__}: {exc}")
    stats = result.stats
    print(f"this run: {stats.kept + stats.dropped} queries in {stats.seconds:.1f} s "
          f"({stats.skipped} already done, {len(queries.problems)} bad lines skipped)")
    print(format_summary(result.summary))
    print(f"pairs: {result.paths.out}\ndropped: {result.paths.dropped}\nsummary: {result.paths.summary}\n"
          f"margins: {result.paths.margins_png}")
    return 0
