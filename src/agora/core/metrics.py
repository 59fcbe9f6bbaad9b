"""Prometheus metrics for every service: one registry per server process."""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agora.core.looplag import LoopLag

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


class HttpRequests(Collector):
    """HTTP requests answered, by method, route and status, and their latency.

    Plain counts folded into Prometheus families when scraped, not prometheus_client's
    Counter and Histogram: those take a lock and walk the buckets in Python on every
    observation, which was a sixth of the cost of a site page answered from the
    protocol (``files/site_protocol.py``). Only the event loop's thread records.
    """

    BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf, so every latency has a bucket

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # Per (method, route): the count in each bucket, then the sum of latencies.
        self.latencies: dict[tuple[str, str], list[float]] = {}

    def record(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        tally = self.latencies.get((method, route))
        if tally is None:
            tally = self.latencies[(method, route)] = [0] * (len(self.BOUNDS) + 1)
        tally[bisect_left(self.BOUNDS, elapsed)] += 1
        tally[-1] += elapsed

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("agora_http_requests", "HTTP requests answered",
                                       labels=["method", "route", "status"])
        for (method, route, status), count in list(self.counts.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily("agora_http_request_duration_seconds", "HTTP request latency",
                                        labels=["method", "route"])
        for (method, route), tally in list(self.latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self.BOUNDS, tally):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([method, route], buckets, sum_value=tally[-1])
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpRequests()
        self.registry.register(self.http)
        self.logins = Counter("agora_logins", "Password checks by protocol and outcome",
                              ["protocol", "outcome"], registry=self.registry)
        self.sql_engine_restarts = Counter("agora_sql_engine_restarts", "Times the embedded PostgreSQL was started again after it died",
                                           registry=self.registry)
        self._connections = _Connections()
        self.registry.register(self._connections)
        self.loop_lag = LoopLag()
        self.registry.register(self.loop_lag)

    def count_connections(self, listener: str, source: Callable[[], int]) -> None:
        self._connections.sources[listener] = source

    def login(self, protocol: str, outcome: str) -> None:
        self.logins.labels(protocol, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
