"""Prometheus metrics of one service instance, in its own registry (tests run several apps per process).

Names are part of the operations contract (dashboards and alerts use them):
- dualdistill_requests_total{route,model,tenant,code}  requests by outcome (code = gRPC code name, "OK" on
                                                  success; tenant "" when the request had no valid key)
- dualdistill_request_seconds{route}             wall time per request, both transports
- dualdistill_response_bytes_total{route}        response body bytes (HTTP) / serialized messages (gRPC)
- dualdistill_forward_seconds{model}             wall time per batched forward (one per batch)
- dualdistill_forward_tokens_total{model}        real (unpadded) tokens through the model
- dualdistill_batch_tokens{model}                padded tokens per forward (batch size x longest sequence)
- dualdistill_batch_sequences{model}             sequences per forward
- dualdistill_inline_forwards_total{model}       forwards run on the event loop's thread (an idle server's
                                                  short ones, core/batcher.py), of all counted in forward_seconds
- dualdistill_queue_tokens{model}                tokens waiting for a forward now
- dualdistill_deduplicated_sequences_total{model} sequences served by joining an identical one in flight
- dualdistill_cache_hits_total{model}            sequences answered by the result cache
- dualdistill_cache_misses_total{model}          sequences the cache did not have (computed or joined)
- dualdistill_cache_errors_total{backend,op}     cache failures answered as misses (op: get, put, decode,
                                                  overflow = a write skipped because the writer fell behind)
- dualdistill_tenant_rejections_total{tenant,limit}  requests refused by a tenant limit (429)
- dualdistill_dialect_requests_total{dialect,code}  requests per API dialect: dualdistill (our /v1/logits,
                                                  /v1/generate), openai (vLLM's /v1/completions, /health),
                                                  trl (`trl vllm-serve`'s /get_sequence_logprobs/, /health/)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKENS = tuple(2**i for i in range(4, 21))
_SEQUENCES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _CachedLabels:
    """`labels(...)` answered from a dict of the children earlier calls made: prometheus_client checks and
    converts the values and takes a lock on every call, and a request makes about ten. A miss asks
    prometheus_client, which makes or finds the child, so the same values always give the same child."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._children_by_call: dict = {}

    def labels(self, *values: str, **named: str):
        key = (values, tuple(named.items()))
        child = self._children_by_call.get(key)
        if child is None:
            child = self._children_by_call[key] = super().labels(*values, **named)
        return child


class _Counter(_CachedLabels, Counter):
    pass


class _Gauge(_CachedLabels, Gauge):
    pass


class _Histogram(_CachedLabels, Histogram):
    pass


class Metrics:
    """All metrics of one TeacherService; `registry` is what /metrics exposes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = _Counter(
            "dualdistill_requests_total", "Requests by route, model, tenant and outcome code.",
            ("route", "model", "tenant", "code"),
            registry=r,
        )
        self.request_seconds = _Histogram(
            "dualdistill_request_seconds", "Request wall time.", ("route",), buckets=_SECONDS, registry=r
        )
        self.forward_seconds = _Histogram(
            "dualdistill_forward_seconds", "Wall time of one batched forward.", ("model",), buckets=_SECONDS,
            registry=r,
        )
        self.forward_tokens = _Counter(
            "dualdistill_forward_tokens_total", "Real (unpadded) tokens through the model.", ("model",), registry=r
        )
        self.batch_tokens = _Histogram(
            "dualdistill_batch_tokens", "Padded tokens per forward.", ("model",), buckets=_TOKENS, registry=r
        )
        self.batch_sequences = _Histogram(
            "dualdistill_batch_sequences", "Sequences per forward.", ("model",), buckets=_SEQUENCES, registry=r
        )
        self.queue_tokens = _Gauge(
            "dualdistill_queue_tokens", "Tokens waiting for a forward.", ("model",), registry=r
        )
        self.inline_forwards = _Counter(
            "dualdistill_inline_forwards_total",
            "Forwards run on the event loop's thread (an idle server's short ones).", ("model",), registry=r,
        )
        self.deduplicated = _Counter(
            "dualdistill_deduplicated_sequences_total",
            "Sequences answered by an identical sequence already in flight.", ("model",), registry=r,
        )
        self.response_bytes = _Counter(
            "dualdistill_response_bytes_total", "Response bytes sent.", ("route",), registry=r
        )
        self.cache_hits = _Counter(
            "dualdistill_cache_hits_total", "Sequences answered by the result cache.", ("model",), registry=r
        )
        self.cache_misses = _Counter(
            "dualdistill_cache_misses_total", "Sequences not in the result cache.", ("model",), registry=r
        )
        self.cache_errors = _Counter(
            "dualdistill_cache_errors_total", "Result-cache failures (answered as misses).", ("backend", "op"),
            registry=r,
        )
        self.tenant_rejections = _Counter(
            "dualdistill_tenant_rejections_total", "Requests refused by a per-tenant limit.", ("tenant", "limit"),
            registry=r,
        )

        self.dialect_requests = _Counter(
            "dualdistill_dialect_requests_total", "Requests per API dialect (dualdistill, openai, trl) and code.",
            ("dialect", "code"), registry=r,
        )

    def observe_request(
        self,
        route: str,
        model: str,
        code: str,
        seconds: float,
        *,
        tenant: str = "",
        response_bytes: int = 0,
        dialect: str | None = None,
    ) -> None:
        self.requests.labels(route=route, model=model, tenant=tenant, code=code).inc()
        if dialect is not None:
            self.dialect_requests.labels(dialect=dialect, code=code).inc()
        self.request_seconds.labels(route=route).observe(seconds)
        if response_bytes:
            self.response_bytes.labels(route=route).inc(response_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
