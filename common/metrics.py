"""Prometheus metrics: one registry per app, request count and latency per route."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The kit's metrics; a service adds its own gauges to `registry`."""

    def __init__(self, service: str, version: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "volex_http_requests",
            "HTTP requests handled, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "volex_http_request_duration_seconds",
            "Time from request to last response byte, by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "volex_dependency_up",
            "1 when the dependency answered the last health check, else 0",
            ["dependency"],
            registry=self.registry,
        )
        self.vault_token_ttl = Gauge(
            "volex_vault_token_ttl_seconds",
            "Seconds left on this service's Vault token",
            registry=self.registry,
        )
        info = Gauge(
            "volex_service_info",
            "Constant 1, labelled with the service and version",
            ["service", "version"],
            registry=self.registry,
        )
        info.labels(service=service, version=version).set(1)
        started = Gauge(
            "volex_service_start_time_seconds",
            "Unix time the process started",
            registry=self.registry,
        )
        started.set(time.time())

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
