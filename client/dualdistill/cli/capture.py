"""`dualdistill capture`: store the teacher's logits for every pair of a pairs file, for offline training.

    dualdistill capture --pairs pairs.jsonl --url http://teacher:8000 --teacher-model teacher \\
        [--reference-model student-sft] --out captures/run1 --top-k 20 [--lossy]
    dualdistill train ... --teacher-url capture:captures/run1

Resumable: rerun the same command after a crash or an outage and it finishes the pairs not yet stored.
The API key comes from DUALDISTILL_API_KEY. Exit status: 0 done; 2 bad input or settings; 3 the service
failed or stayed down (stored pairs are kept: rerun to resume). docs/training.md has the layout.
"""

from __future__ import annotations

import argparse
import os
import sys

from dualdistill.protocol.params import LOGITS_MODES

EXIT_BAD_INPUT, EXIT_SERVICE = 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "capture",
        help="store teacher logits for a pairs file (train later with --teacher-url capture:DIR)",
        description="Fetch the teacher's top-k rows (and a reference model's token logprobs) for every pair "
        "and store them in shards of the binary wire format with an index.",
    )
    parser.add_argument(
        "--pairs", required=True, action="append", metavar="PAIRS.jsonl",
        help="pairs file to capture (repeatable: add the eval pairs too when training evaluates from it)",
    )
    parser.add_argument("--url", required=True, help="teacher service: http://host:port or host:port (gRPC)")
    parser.add_argument("--teacher-model", required=True, help="served teacher model name")
    parser.add_argument("--reference-model", help="served model whose token logprobs are the DPO reference")
    parser.add_argument("--out", required=True, metavar="DIR", help="capture directory (created; resumed if present)")
    parser.add_argument("--top-k", type=int, default=20, help="entries per position (default 20)")
    parser.add_argument("--temperature", type=float, default=1.0, help="teacher temperature (default 1)")
    parser.add_argument("--mode", choices=LOGITS_MODES, default="topk", help="row kind (default topk)")
    parser.add_argument("--samples", type=int, default=64, help="draws per position in sample mode (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="sample-mode seed; use the training seed (default 0)")
    parser.add_argument("--lossy", action="store_true", help="store with the compact lossy codec (default lossless)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per request (default 8)")
    parser.add_argument("--depth", type=int, default=2, help="requests in flight at once (default 2)")
    parser.add_argument("--max-seq-len", type=int, help="cut sequences to this many tokens (default: uncut)")
    parser.add_argument("--shard-mb", type=int, default=256, help="shard size cap in MiB (default 256)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt (default 120)")
    parser.add_argument("--max-attempts", type=int, default=10, help="attempts per request (default 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dualdistill.client import RetryPolicy, TeacherClient, TeacherServiceError
    from dualdistill.protocol.params import LogitsParams
    from dualdistill.trainer.capture.run import capture_pairs
    from dualdistill.trainer.capture.store import CaptureError

    try:
        client = TeacherClient(
            args.url,
            api_key=os.environ.get("DUALDISTILL_API_KEY") or None,
            timeout=args.timeout,
            retries=RetryPolicy(max_attempts=args.max_attempts),
            format="binary-lossless",  # fetch exactly; --lossy applies when storing
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with client:
            summary = capture_pairs(
                args.pairs,
                client,
                args.teacher_model,
                args.out,
                params=LogitsParams(
                    top_k=args.top_k, temperature=args.temperature, mode=args.mode, samples=args.samples,
                    seed=args.seed,
                ),
                reference_model=args.reference_model,
                lossless=not args.lossy,
                batch_size=args.batch_size,
                depth=args.depth,
                max_seq_len=args.max_seq_len,
                shard_bytes=args.shard_mb * 1024 * 1024,
                progress=not args.no_progress,
            )
    except TeacherServiceError as exc:
        print(f"error: teacher service: {exc} (stored pairs are kept; rerun to resume)", file=sys.stderr)
        return EXIT_SERVICE
    except (CaptureError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"captured {summary.captured} pairs ({summary.already} already stored, {summary.total} in all) "
        f"into {summary.directory}; index {summary.index}"
    )
    return 0
