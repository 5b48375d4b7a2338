"""Prometheus metrics of one server (its own registry, so several apps in a test do not clash)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from expertkit.runtime.prefix_cache import PrefixCache

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

    def watch_prefixes(self, prefixes: PrefixCache) -> None:
        """Report the prefix cache's reuse (read when scraped)."""
        self.registry.register(_PrefixCollector(prefixes))

    def watch_decoding(self, threads: Callable[[], int], positions: Callable[[], int]) -> None:
        """Report the generation thread's intra-op threads and the batch cache's positions (read when scraped)."""
        self.registry.register(_DecodingCollector(threads, positions))

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCollector(Collector):
    def __init__(self, prefixes: PrefixCache) -> None:
        self.prefixes = prefixes

    def collect(self) -> list:
        p = self.prefixes
        hits = CounterMetricFamily("expertkit_prefix_cache_hits", "Prompts whose start was reused", value=p.hits)
        misses = CounterMetricFamily("expertkit_prefix_cache_misses", "Prompts prefilled whole", value=p.misses)
        tokens = CounterMetricFamily(
            "expertkit_prefix_cache_reused_tokens", "Prompt tokens not prefilled again", value=p.reused_tokens
        )
        size = GaugeMetricFamily("expertkit_prefix_cache_bytes", "Keys and values kept for reuse", value=p.nbytes)
        return [hits, misses, tokens, size]


class _DecodingCollector(Collector):
    def __init__(self, threads: Callable[[], int], positions: Callable[[], int]) -> None:
        self.threads, self.positions = threads, positions

    def collect(self) -> list:
        threads = GaugeMetricFamily(
            "expertkit_decode_threads", "Intra-op threads of the generation thread's last step", value=self.threads()
        )
        positions = GaugeMetricFamily(
            "expertkit_batch_cache_positions", "Positions per slot the batch cache holds now", value=self.positions()
        )
        return [threads, positions]
