"""Per-request context shared by the transports, the core and the logs.

A transport opens a `RequestContext` when a request arrives and sets the tenant once the API key is
checked; the core fills in the model once it has resolved it; logs read the request id and tenant from
it; metrics read the model, tenant and the final code. It is a
mutable object behind a ContextVar, so tasks spawned for the request (which copy the context) update
the same object.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass

# Client-chosen ids are echoed in headers and logs: keep them short and printable.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,128}$")


@dataclass
class RequestContext:
    request_id: str
    model: str = ""  # set once the model name is known to be served (bounded label cardinality)
    tenant: str = ""  # set once the API key is checked (core.api_keys; never the key itself)
    code: str = ""  # gRPC code name of the error, once one is reported ("" = none so far)


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
