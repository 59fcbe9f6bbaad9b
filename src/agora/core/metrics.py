"""Prometheus metrics for every service: one registry per server process."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Connections(Collector):
    """Open connections per listener, read from the listeners when scraped."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("agora_connections", "Open client connections per listener",
                                   labels=["listener"])
        for name, count in sorted(self.sources.items()):
            family.add_metric([name], count())
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("agora_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("agora_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry)
        self.logins = Counter("agora_logins", "Password checks by protocol and outcome",
                              ["protocol", "outcome"], registry=self.registry)
        self._connections = _Connections()
        self.registry.register(self._connections)

    def count_connections(self, listener: str, source: Callable[[], int]) -> None:
        self._connections.sources[listener] = source

    def login(self, protocol: str, outcome: str) -> None:
        self.logins.labels(protocol, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
