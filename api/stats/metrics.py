"""Prometheus metrics of the stats API: the request metrics every service has, plus the query ones."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api.common.httpkit import HttpMetrics

# From a cached freshness answer on loopback (~1 ms) to a statement at its timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StatsMetrics(HttpMetrics):
    """Every metric the stats API exports (``imgstream_stats_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("imgstream_stats", _LATENCY_BUCKETS, registry)
        r = self.registry
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
        # Looked up once and kept, like the request children (query names are a closed set).
        self._query_children: dict[str, Any] = {}

    def query(self, name: str, seconds: float) -> None:
        """Observe one statement (or statements of one request) and its latency."""
        child = self._query_children.get(name)
        if child is None:
            child = self._query_children[name] = self.queries.labels(name)
        child.observe(seconds)
