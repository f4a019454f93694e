"""Entry point of the `dualdistill` command.

Each subcommand lives in its own module of this package and exposes `add_parser(subparsers)`, which
registers its flags and sets `func` on the parsed namespace. Parsers import nothing heavy, so
`dualdistill --help` and the deployment tests (which parse every flag a manifest passes) stay fast and
work without the server extras; the commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import sys

from dualdistill.cli.grpc_core import choose_grpc_experiments

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
    choose_grpc_experiments()  # before any command imports grpc (grpc_core.py)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc)
        if message is None:
            raise
        print(f"dualdistill {args.command}: {message}", file=sys.stderr)
        return 2


def canonical_name(name: str) -> str:
    """A distribution's name as the package index compares them (PEP 503: runs of -_. as one -, lower case)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras(distribution: str = "dualdistill") -> dict[str, list[str]]:
    """{canonical requirement name: the extras of `distribution` that list it} from its installed metadata
    ({} where it is not installed, e.g. run from a source tree)."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[str]] = {}
    for text in requirements:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", text)
        if name and extra:
            out.setdefault(canonical_name(name.group()), []).append(extra.group(1))
    return out


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """What to tell the user when a command's module is not installed; None for one of our own modules
    (a broken install, whose traceback is the useful answer)."""
    missing = (exc.name or "").partition(".")[0]
    if not missing or missing in ("dualdistill", "dualdistill_server"):
        return None
    extras = declared_extras().get(canonical_name(missing))
    if extras:
        hint = " or ".join(f"pip install 'dualdistill[{extra}]'" for extra in extras)
        return f"the Python module {missing!r} is not installed; this command needs it: {hint}"
    return (f"the Python module {missing!r} is not installed; the serving and training commands need the "
            "project's extras: pip install 'dualdistill[server]' (serve, models) or 'dualdistill[train]' (train, "
            "pairs, capture)")


if __name__ == "__main__":
    sys.exit(main())
