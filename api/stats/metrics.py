"""Prometheus metrics of the stats API, on a registry of their own (one per app, so tests can build
many apps in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a cached freshness answer on loopback (~1 ms) to a statement at its timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StatsMetrics:
    """Every metric the stats API exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgstream_stats_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("imgstream_stats_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("imgstream_stats_requests_in_flight", "HTTP requests being served", registry=r)
        self.queries = Histogram("imgstream_stats_query_duration_seconds",
                                 "PostgreSQL statement latency by query (connection wait included)",
                                 ["query"], buckets=_LATENCY_BUCKETS, registry=r)
        self.query_errors = Counter("imgstream_stats_query_errors", "Statements that failed, by query and reason",
                                    ["query", "reason"], registry=r)
        self.not_modified = Counter("imgstream_stats_not_modified",
                                    "Answers served as 304 Not Modified (If-None-Match matched)", registry=r)
        self.lag = Gauge("imgstream_stats_data_lag_seconds",
                         "How far behind real time each replicated table is (now - newest event applied)",
                         ["table"], registry=r)
        self.pool_size = Gauge("imgstream_stats_pool_connections", "PostgreSQL pool connections by state",
                               ["state"], registry=r)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._query_children: dict[str, Any] = {}

    # Label children are looked up once and kept: ``labels()`` costs a lock and a tuple hash per
    # call, three times per request; the label sets are bounded (routes x methods x statuses,
    # query names), so the caches are too.

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one served request and its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def query(self, name: str, seconds: float) -> None:
        """Observe one statement (or statements of one request) and its latency."""
        child = self._query_children.get(name)
        if child is None:
            child = self._query_children[name] = self.queries.labels(name)
        child.observe(seconds)
