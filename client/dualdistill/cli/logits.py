"""`dualdistill logits`: show what the teacher predicts at every position of a text, as a table.

    dualdistill logits --url http://localhost:8000 --model smollm2 --text "The answer is 42." --top-k 5

The service has no tokenize endpoint (ids are the client's business), so text is tokenized here with
`--tokenizer` (a model directory, or a prepared alias such as 'smollm2'); without it the model name is
tried as an alias. The tokenizer handshake runs first, so the ids are the teacher's. `--token-ids` needs
no tokenizer (tokens are then shown as ids, unless one is available for decoding).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logits",
        help="print the teacher's top-k next-token distribution at every position of a text",
        description="Query a running teacher service and print position, token, its probability and the "
        "top alternatives.",
    )
    parser.add_argument("--url", required=True, help="http://host:port (HTTP) or host:port (gRPC)")
    parser.add_argument("--model", required=True, help="served model name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to score (tokenized locally, see --tokenizer)")
    source.add_argument("--token-ids", help="comma-separated token ids, e.g. 1,2,3")
    parser.add_argument(
        "--chat", action="store_true", help="wrap --text as a user message in the chat template"
    )
    parser.add_argument("--top-k", type=int, default=5, help="alternatives per position (default 5)")
    parser.add_argument("--start", type=int, default=1, help="first position shown, >= 1 (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="teacher temperature (default 1.0)")
    parser.add_argument("--transport", choices=("http", "grpc", "openai"), help="default: inferred from --url")
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    parser.add_argument(
        "--tokenizer", metavar="DIR_OR_ALIAS", help="tokenizer (default: --model as an alias)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default 30)")
    parser.set_defaults(func=run)


def load_tokenizer(spec: str) -> Any:
    """A tokenizer from a model directory, or from a prepared alias of the server package ('smollm2')."""
    from transformers import AutoTokenizer

    if os.path.isdir(spec):
        return AutoTokenizer.from_pretrained(spec)
    try:
        from dualdistill_server.models.prepare import ALIASES, prepare_alias
    except ImportError as exc:
        raise LookupError(
            f"{spec!r} is not a directory (and the server package, which knows aliases, is absent)"
        ) from exc
    if spec not in ALIASES:
        raise LookupError(f"{spec!r} is neither a directory nor a prepared alias {sorted(ALIASES)}")
    return AutoTokenizer.from_pretrained(prepare_alias(spec))


def token_ids_from_text(tokenizer: Any, text: str, chat: bool) -> list[int]:
    if chat:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    return list(tokenizer(text)["input_ids"])


def format_table(
    token_ids: Sequence[int], start: int, result: Any, decode: Callable[[int], str] | None, top_k: int
) -> str:
    """One line per position i in [start, T): i, x[i], p(x[i] | x[:i]), the top alternatives.

    `result` is the sequence's SequenceLogits; `decode(id)` gives a token's text (shown repr-escaped);
    without it tokens are shown as ids. The actual token is starred among the alternatives.
    """

    def show(token_id: int, width: int = 0) -> str:
        text = repr(decode(token_id)) if decode is not None else f"#{token_id}"
        text = text if len(text) <= 18 else text[:15] + "..."
        return text.ljust(width)

    ids, logprobs, _ = result.dense()
    header = f"{'pos':>5}  {'token':<18}  {'logprob':>8}  {'prob':>6}  top-{top_k} alternatives (prob)"
    lines = [header, "-" * len(header)]
    for row, position in enumerate(range(start, len(token_ids))):
        actual = int(token_ids[position])
        logprob = float(result.token_logprobs[row])
        alternatives = []
        for token_id, alt_logprob in zip(ids[row], logprobs[row], strict=True):
            if math.isinf(alt_logprob):
                continue  # row padding
            star = "*" if int(token_id) == actual else ""
            alternatives.append(f"{star}{show(int(token_id))} {math.exp(alt_logprob):.3f}")
        lines.append(
            f"{position:>5}  {show(actual, 18)}  {logprob:>8.3f}  {math.exp(logprob):>6.3f}  "
            + "  ".join(alternatives)
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dualdistill.client import TeacherClient, TeacherServiceError, TokenizerMismatchError

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        print(f"error: environment variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    tokenizer = None
    try:
        tokenizer = load_tokenizer(args.tokenizer or args.model)
    except Exception as exc:  # noqa: BLE001 - any loader failure: report it, or go on without decoding
        if args.tokenizer or args.text is not None:
            print(f"error: cannot load tokenizer {args.tokenizer or args.model!r}: {exc}", file=sys.stderr)
            print(
                "pass --tokenizer DIR (the directory the teacher was served from), or --token-ids",
                file=sys.stderr,
            )
            return 2
    try:
        with TeacherClient(
            args.url, api_key=api_key, transport=args.transport, timeout=args.timeout
        ) as client:
            if tokenizer is not None:  # the handshake: ids made or decoded here must be the teacher's
                info = client.check_tokenizer(tokenizer, args.model)
            else:
                info = client.model_info(args.model)
            if args.text is not None:
                token_ids = token_ids_from_text(tokenizer, args.text, args.chat)
            else:
                token_ids = [int(part) for part in args.token_ids.replace(" ", "").split(",") if part]
            (result,) = client.logits(
                args.model, [token_ids], [args.start], top_k=args.top_k, temperature=args.temperature
            )
    except (TeacherServiceError, TokenizerMismatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else None
    print(
        f"model {info.name} (fingerprint {info.fingerprint}), {len(token_ids)} tokens, "
        f"positions {args.start}..{len(token_ids) - 1}, temperature {args.temperature:g}"
    )
    print(format_table(token_ids, args.start, result, decode, args.top_k))
    return 0
