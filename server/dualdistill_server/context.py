"""Per-request context shared by the transports, the core and the logs.

A transport opens a `RequestContext` when a request arrives and sets the tenant once the API key is
checked; the core fills in the model once it has resolved it; logs read the request id and tenant from
it; metrics read the model, tenant and the final code. It is a
mutable object behind a ContextVar, so tasks spawned for the request (which copy the context) update
the same object.

It also collects the request's stage times (`record_timing`), which the transports return as a
`server-timing` header (HTTP) or trailing metadata entry (gRPC): `parse;dur=0.051, queue;dur=0.012,
forward;dur=2.305, encode;dur=0.644, total;dur=3.198`, milliseconds (the W3C Server-Timing syntax).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

# Client-chosen ids are echoed in headers and logs: keep them short and printable.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,128}$")


@dataclass
class RequestContext:
    request_id: str
    model: str = ""  # set once the model name is known to be served (bounded label cardinality)
    tenant: str = ""  # set once the API key is checked (core.api_keys; never the key itself)
    code: str = ""  # gRPC code name of the error, once one is reported ("" = none so far)
    began: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, in the order recorded


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("dualdistill_request", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(candidate: str | None) -> str:
    """The client's id if it is acceptable, else a fresh one (never an error: ids are a courtesy)."""
    if candidate and _REQUEST_ID_RE.match(candidate):
        return candidate
    return new_request_id()


def open_request(request_id: str | None) -> tuple[RequestContext, contextvars.Token]:
    context = RequestContext(request_id=clean_request_id(request_id))
    return context, _current.set(context)


def resolve_request_id(body_request_id: str, *, adopt: bool = True) -> str:
    """The id a request answers with, resolved once per request by its transport.

    The body's `request_id` wins over the transport's (x-request-id header or metadata, else a fresh
    id). With `adopt`, a header-safe body id also becomes the context's id, so the logs, the metrics and
    the response's x-request-id carry it. A stream's messages do not adopt (`adopt=False`): they share
    one context, whose id stays the stream's.
    """
    ctx = _current.get()
    if ctx is None:
        return body_request_id
    if adopt and body_request_id and clean_request_id(body_request_id) == body_request_id:
        ctx.request_id = body_request_id
    return body_request_id or ctx.request_id


def close_request(token: contextvars.Token) -> None:
    try:
        _current.reset(token)
    except ValueError:  # closed from another context (an async generator finalised elsewhere): harmless
        pass


def current() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str:
    context = _current.get()
    return context.request_id if context else ""


def current_tenant() -> str:
    context = _current.get()
    return context.tenant if context else ""


# Stages a request may report (`record_timing`); names are fixed so the header stays bounded.
TIMING_STAGES = ("parse", "cache", "queue", "forward", "generate", "encode")


def record_timing(stage: str, seconds: float) -> None:
    """Add `seconds` to the current request's `stage` (a stage reached twice, e.g. the forwards of a request
    spread over several batches, sums). No-op outside a request."""
    if stage not in TIMING_STAGES:
        raise ValueError(f"unknown timing stage {stage!r} (one of {TIMING_STAGES})")
    context = _current.get()
    if context is not None:
        context.timings[stage] = context.timings.get(stage, 0.0) + seconds


@contextlib.contextmanager
def timed(stage: str, *, record: bool = True) -> Iterator[None]:
    """`record_timing(stage, seconds the block took)` when the block completes (and `record` holds)."""
    begin = time.perf_counter()
    yield
    if record:
        record_timing(stage, time.perf_counter() - begin)


def server_timing(context: RequestContext) -> str:
    """The `server-timing` value: every recorded stage, then `total` (since the request arrived), in ms."""
    total = time.perf_counter() - context.began
    parts = [f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in context.timings.items()]
    return ", ".join([*parts, f"total;dur={total * 1e3:.3f}"])
