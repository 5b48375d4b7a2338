"""Prometheus metrics of one server (its own registry, so several apps in a test do not clash)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "expertkit_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter("expertkit_errors", "Errors by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("expertkit_queue_depth", "Generations waiting or running", registry=r)
        self.tokens = Counter("expertkit_generated_tokens", "Completion tokens generated", ["expert"], registry=r)
        self.tokens_per_s = Gauge("expertkit_tokens_per_second", "Decode speed of the last generation", registry=r)
        self.latency = Histogram(
            "expertkit_request_latency_seconds",
            "Latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
