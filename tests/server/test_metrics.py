"""Metrics: the cached `labels()` gives prometheus_client's own children, so what /metrics renders is what
plain prometheus_client metrics would render for the same calls."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from dualdistill_server.metrics import Metrics


def test_cached_labels_give_the_same_children_however_they_are_named():
    metrics = Metrics()
    first = metrics.requests.labels(route="/v1/logits", model="tiny", tenant="", code="OK")
    assert metrics.requests.labels(route="/v1/logits", model="tiny", tenant="", code="OK") is first
    assert metrics.requests.labels(code="OK", tenant="", model="tiny", route="/v1/logits") is first
    assert metrics.requests.labels("/v1/logits", "tiny", "", "OK") is first
    assert metrics.requests.labels(route="/v1/logits", model="tiny", tenant="", code="NOT_FOUND") is not first


def test_rendered_metrics_equal_plain_prometheus_client():
    metrics = Metrics()
    plain_registry = CollectorRegistry()
    plain_requests = Counter("dualdistill_requests_total", "Requests by route, model, tenant and outcome code.",
                             ("route", "model", "tenant", "code"), registry=plain_registry)  # fmt: skip
    plain_seconds = Histogram("dualdistill_request_seconds", "Request wall time.", ("route",),
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                       120), registry=plain_registry)  # fmt: skip
    calls = [("/v1/logits", "tiny", "alice", "OK", 0.004), ("/v1/logits", "tiny", "", "OK", 0.02),
             ("/v1/generate", "tiny", "alice", "INVALID_ARGUMENT", 0.0005), ("/v1/logits", "tiny", "alice", "OK", 3.0)]
    for route, model, tenant, code, seconds in calls:
        metrics.observe_request(route, model, code, seconds, tenant=tenant)
        plain_requests.labels(route=route, model=model, tenant=tenant, code=code).inc()
        plain_seconds.labels(route=route).observe(seconds)
    assert _samples(metrics.render()) == _samples(generate_latest(plain_registry))


def _samples(text: bytes) -> list[str]:
    """The two families' sample lines, without their creation times (when each metric was made)."""
    lines = text.decode().splitlines()
    kept = [line for line in lines if line.startswith(("dualdistill_requests_total{", "dualdistill_request_seconds_"))
            and "_created{" not in line]  # fmt: skip
    assert len(kept) > 10
    return kept
