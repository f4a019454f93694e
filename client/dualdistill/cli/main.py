"""Entry point of the `dualdistill` command.

Each subcommand lives in its own module of this package and exposes `add_parser(subparsers)`, which
registers its flags and sets `func` on the parsed namespace. Parsers import nothing heavy, so
`dualdistill --help` and the deployment tests (which parse every flag a manifest passes) stay fast and
work without the server extras; the commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in `--help`.
COMMAND_MODULES = ("serve", "models", "logits", "pairs", "capture", "train", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualdistill",
        description="Dual-level Preference Distillation: serve a teacher, build pairs, train students.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dualdistill.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dualdistill.cli.{name}":
                continue  # command not built into this version
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
