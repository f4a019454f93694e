"""`dualdistill models`: prepare, list and prune local models (server extras needed to run, not to parse).

    dualdistill models prepare smollm2 [--out DIR] [--force]
    dualdistill models list
    dualdistill models prune SRC OUT (--every N | --layers 0,3,5)
"""

from __future__ import annotations

import argparse
import json
import sys

KNOWN_ALIASES = ("smollm2",)  # kept in step with dualdistill_server.models.prepare.ALIASES (tested)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="prepare, list and prune local models",
        description="Prepare shipped models as Hugging Face directories under $DUALDISTILL_HOME/models "
        "(default ~/.cache/dualdistill/models), list them, or build a layer-pruned student.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    prepare = actions.add_parser("prepare", help="convert a shipped model once into a cached HF directory")
    prepare.add_argument("alias", choices=KNOWN_ALIASES, help="model to prepare")
    prepare.add_argument("--out", default=None, help="output directory (default $DUALDISTILL_HOME/models/ALIAS)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prepare.set_defaults(func=run_prepare)

    listing = actions.add_parser("list", help="list known aliases and prepared directories")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)

    prune = actions.add_parser("prune", help="copy a model keeping only some decoder layers (same tokenizer)")
    prune.add_argument("src", help="source HF directory or alias (e.g. smollm2)")
    prune.add_argument("out", help="output directory")
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("--every", type=int, help="keep layers 0, N, 2N, ...")
    which.add_argument("--layers", type=_layer_list, help="comma-separated layer indices to keep, e.g. 0,4,8")
    prune.set_defaults(func=run_prune)


def _layer_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run_prepare(args: argparse.Namespace) -> int:
    from dualdistill_server.models.prepare import prepare_alias

    try:
        path = prepare_alias(args.alias, out_dir=args.out, force=args.force)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dualdistill_server.models.prepare import list_prepared

    rows = list_prepared()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<20} {'STATE':<12} {'SIZE':>10}  PATH")
    for row in rows:
        state = "prepared" if row["prepared"] else ("not prepared" if row["alias"] else "incomplete")
        size = f"{row['bytes'] / 2**20:.1f} MiB" if row["bytes"] else "-"
        print(f"{row['name']:<20} {state:<12} {size:>10}  {row['path']}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from dualdistill_server.models import ModelLoadError, prune_layers, resolve_model_path

    keep: list[int] | int = args.every if args.every is not None else args.layers
    try:
        print(prune_layers(resolve_model_path(args.src), args.out, keep))
    except (ValueError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
