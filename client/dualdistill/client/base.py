"""What the sync and async clients share: settings, the transport choice, counters, model lookup."""

from __future__ import annotations

import math
from typing import Any

from dualdistill.client import operations as ops
from dualdistill.client.endpoint import Endpoint, open_transport, parse_endpoint
from dualdistill.client.errors import TeacherServiceError
from dualdistill.client.retry import CallStats, RetryHook, RetryPolicy
from dualdistill.client.types import ModelInfo
from dualdistill.protocol.formats import LOGITS_FORMATS as FORMATS
from dualdistill.protocol.params import LogitsParams

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # the server's default limit (ServerConfig.max_message_bytes)


class ClientBase:
    """Settings shared by `TeacherClient` and `AsyncTeacherClient` (see their docstrings)."""

    asynchronous: bool = False  # whether the transport's calls are coroutines; set by each subclass

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        transport: str | None = None,
        timeout: float = 30.0,
        retries: RetryPolicy | None = None,
        format: str = "binary",
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_retry: RetryHook | None = None,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.endpoint: Endpoint = parse_endpoint(url, transport)
        self.timeout = float(timeout)
        self.retries = retries if retries is not None else RetryPolicy()
        self.format = format
        self.on_retry = on_retry
        self.stats = CallStats()
        self._transport: Any = open_transport(self.endpoint, api_key, max_message_bytes, self.asynchronous)

    @property
    def transport(self) -> str:
        return self.endpoint.transport

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint.address!r}, transport={self.transport!r})"

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    def _logits_op(
        self, model: str, sequences: Any, starts: Any, params: LogitsParams | None, timeout: float | None,
        overrides: dict[str, Any],
    ):
        """(operation, seconds): a logits request in this client's format whose server-side deadline is the
        attempt's timeout, so the server drops work nobody waits for."""
        seconds = self._timeout(timeout)
        params = (params if params is not None else LogitsParams()).with_overrides(**overrides)
        op = ops.logits(model, sequences, starts, params, format=self.format, deadline_seconds=seconds)
        return op, seconds

    @staticmethod
    def _pick_model(models: list[ModelInfo], name: str) -> ModelInfo:
        for info in models:
            if info.name == name:
                return info
        served = ", ".join(repr(m.name) for m in models) or "none"
        raise TeacherServiceError(
            "NOT_FOUND", f"model {name!r} is not served here (served: {served})", "model", 404
        )
