"""`dualdistill train`: train a student with DPD against a teacher service (or an offline capture).

    dualdistill train --config train.yaml --teacher-url http://teacher:8000 --pairs pairs.jsonl \\
        --student ./student-sft --output-dir runs/dpd [--resume] [--set key=value ...]
    torchrun --nproc_per_node 2 -m dualdistill.cli.main train ...          # DDP, one shard per rank

Precedence: TrainConfig defaults < --config file < the named flags < --set overrides. The API key comes
from the environment (DUALDISTILL_API_KEY), never from a flag or a file. Flag names are pinned: the
deployment files use them. docs/training.md lists every config field.

Exit status: 0 done; 2 bad config or input (nothing trained); 3 the teacher failed or stayed down
(resume from the newest checkpoint with --resume); 4 the tokenizer does not match the teacher's.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT, EXIT_SERVICE, EXIT_TOKENIZER = 2, 3, 4

# (flag, TrainConfig field, help). Pinned: used by docker-compose, the Helm chart and docs.
PINNED_FLAGS: list[tuple[str, str, str]] = [
    ("--teacher-url", "teacher_url", "teacher service URL, or capture:DIR for an offline capture"),
    ("--pairs", "pairs", "pairs JSONL (from `dualdistill pairs`)"),
    ("--student", "student", "HF causal-LM directory of the student"),
    ("--output-dir", "output_dir", "checkpoints, metrics.jsonl and plots go here"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a student with DPD (DPO + KD on positives and negatives)",
        description="Train a student from preference pairs and the teacher's token distributions.",
        epilog=fields_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML or JSON file of TrainConfig fields")
    for flag, dest, text in PINNED_FLAGS:
        parser.add_argument(flag, dest=dest, default=None, help=text)
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue from the newest checkpoint in --output-dir"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field (repeatable; YAML values; loss.NAME=VALUE for the loss)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def fields_epilog() -> str:
    """Every config field with its default and help (the same metadata as docs/training.md's table)."""
    from dataclasses import fields

    from dualdistill.trainer.config import TrainConfig, default_repr

    lines = ["config fields (YAML/JSON --config, or --set KEY=VALUE):"]
    for f in fields(TrainConfig):
        lines.append(f"  {f.name} = {default_repr(f)}\n      {f.metadata['help']}")
    return "\n".join(lines)


def resolve_config(args: argparse.Namespace):
    """The TrainConfig the flags describe (validated)."""
    from dualdistill.trainer.config import TrainConfig

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    config.update({dest: getattr(args, dest) for _, dest, _ in PINNED_FLAGS if getattr(args, dest) is not None})
    if args.resume:
        config.resume = True
    for assignment in args.overrides:
        config.apply_override(assignment)
    return config.validate()


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.print_config:
        print(config.to_json())
        return 0
    from dualdistill.client import TeacherServiceError, TokenizerMismatchError
    from dualdistill.trainer import train

    try:
        result = train(config)
    except TokenizerMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TOKENIZER
    except TeacherServiceError as exc:
        print(f"error: teacher service: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"done: step {result.final_step}, model in {result.model_dir}")
    return 0
