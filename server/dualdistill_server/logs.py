"""JSON-lines logs on stderr, each record with the request id and tenant of the request it belongs to.

API keys are never logged: the transports log routes, codes and tenant names, never headers or metadata.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .context import current_request_id, current_tenant

# Attributes the transports attach with `extra=` that belong in the JSON object.
_EXTRA_KEYS = ("route", "status", "code", "model", "engine", "seconds", "bytes", "objects", "http", "grpc")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "tenant"):
            value = getattr(record, key, "")
            if value:
                out[key] = value
        for key in _EXTRA_KEYS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class RequestIdFilter(logging.Filter):
    """Stamps the current request id and tenant on the record where it is created (the request's task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = current_request_id()
        if not getattr(record, "tenant", ""):
            record.tenant = current_tenant()
        return True


def configure_logging(level: str) -> None:
    """Root logger -> one JSON object per line on stderr (uvicorn's and grpc's loggers included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings.warn (numpy, torch, libraries) as JSON records too, not as raw two-line text on stderr.
    logging.captureWarnings(True)
    # uvicorn's own access log repeats ours (which has the request id); keep its error log.
    logging.getLogger("uvicorn.access").disabled = True
