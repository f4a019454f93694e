"""`dualdistill serve`: run the teacher service (HTTP + gRPC) in this process.

Flags default to None so that the environment (DUALDISTILL_*) and then ServerConfig's defaults apply;
a flag given on the command line wins. The flag names are pinned: deployment files use them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

# (flag, ServerConfig field, type, help). Help text is short; `docs/deploy.md` has the full table.
SERVE_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--host", "host", str, "interface to bind (default 0.0.0.0)"),
    ("--http-port", "http_port", int, "HTTP port (default 8000; 0 = pick a free one)"),
    ("--grpc-port", "grpc_port", int, "gRPC port (default 50051; 0 = pick a free one)"),
    ("--engine", "engine", str, "hf | vllm: what computes the models (default hf; docs/deploy.md)"),
    ("--device", "device", str, "torch device of the hf engine (default cpu)"),
    ("--dtype", "dtype", str, "float32 | bfloat16 | float16 (default float32)"),
    ("--max-top-k", "max_top_k", int, "largest top_k a request may ask for (default 256)"),
    ("--max-seq-len", "max_seq_len", int, "longest sequence accepted, in tokens (default 4096)"),
    ("--max-samples", "max_samples", int, "largest `samples` in sample mode (default 1024)"),
    ("--max-batch-tokens", "max_batch_tokens", int, "padded tokens per forward pass (default 8192)"),
    ("--max-wait-ms", "max_wait_ms", float, "batcher fill window in ms while the model is idle (default 0)"),
    ("--inline-forward-ms", "inline_forward_ms", float, "longest forward an idle server runs on its event loop's thread (default 5; 0 = never)"),
    ("--max-queue-tokens", "max_queue_tokens", int, "queued tokens per model before 429 (default 262144)"),
    ("--max-body-bytes", "max_body_bytes", int, "largest HTTP body; 413 above (default 32 MiB)"),
    ("--max-message-bytes", "max_message_bytes", int, "largest gRPC message sent (default 256 MiB)"),
    ("--max-receive-message-bytes", "max_receive_message_bytes", int, "largest gRPC request message; RESOURCE_EXHAUSTED above (default 8 MiB)"),
    ("--header-timeout-seconds", "header_timeout_seconds", float, "seconds a connection has to send a complete request head (default 10)"),
    ("--body-timeout-seconds", "body_timeout_seconds", float, "seconds an HTTP request body has to arrive after its head (default 60)"),
    ("--max-connections", "max_connections", int, "open connections per transport; more are refused (default 1000)"),
    ("--api-key-file", "api_key_file", str, "file of tenant:key lines (env DUALDISTILL_API_KEYS: same, comma-separated)"),
    ("--cache", "cache", str, "memory | disk:DIR | redis://HOST:PORT/DB[?ttl=SECONDS] | none (default memory)"),
    ("--cache-bytes", "cache_bytes", int, "memory or disk cache byte budget (default 1 GiB)"),
    ("--drain-seconds", "drain_seconds", float, "grace period for in-flight work on SIGTERM (default 30)"),
    ("--metrics-port", "metrics_port", int, "also serve /metrics on this port"),
    ("--tenant-tokens-per-second", "tenant_tokens_per_second", float, "per-tenant token-rate limit"),
    ("--tenant-max-concurrency", "tenant_max_concurrency", int, "per-tenant cap on requests in flight"),
    ("--max-generate-tokens", "max_generate_tokens", int, "largest prompts x n x max_new_tokens per generate request (default 65536)"),
    ("--compat-apply-temperature", "compat_apply_temperature", lambda v: _on_off(v),
     "on | off: the vLLM/TRL endpoints apply the request temperature to logprobs (default off, as vLLM)"),
    ("--log-level", "log_level", str, "debug | info | warning | error (default info)"),
]


def _on_off(value: str) -> bool:
    """A boolean flag's value: on/true/1/yes or off/false/0/no."""
    lowered = value.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve teacher logits over HTTP and gRPC",
        description="Serve one or more models' next-token distributions over HTTP (FastAPI) and gRPC.",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME=PATH",
        help="a model to serve (repeatable): HF directory, hub id, or a prepared alias ('smollm2')",
    )
    for flag, dest, kind, text in SERVE_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument(
        "--engine-arg",
        dest="engine_args",
        action="append",
        type=engine_arg,
        metavar="KEY=VALUE",
        help="a vLLM engine argument (repeatable, --engine vllm only), e.g. tensor_parallel_size=2; VALUE is "
        "parsed as JSON when it parses, else taken as a string",
    )
    parser.set_defaults(func=run)


def engine_arg(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (KEY, VALUE as JSON if it parses, else the string): '2' -> 2, 'ray' -> 'ray'."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given on the command line (None means: not given, use env/default)."""
    names = ["models"] + [dest for _, dest, _, _ in SERVE_FLAGS]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if getattr(args, "engine_args", None):
        overrides["engine_args"] = dict(args.engine_args)  # a repeated key: the last one wins
    return overrides


def run(args: argparse.Namespace) -> int:
    from dualdistill_server.main import serve_forever  # server extras needed from here on

    return serve_forever(overrides_from_args(args))
