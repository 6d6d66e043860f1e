"""Prometheus metrics of the gateway, on a registry of their own (one per app, so tests can build
many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from a 50 KB upload on loopback (a few ms) to a 25 MiB upload on a slow link.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgstream_gateway_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("imgstream_gateway_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("imgstream_gateway_requests_in_flight", "HTTP requests being served", registry=r)
        self.received_bytes = Counter("imgstream_gateway_received_bytes",
                                      "Image bytes read from request bodies", registry=r)
        self.stored_bytes = Counter("imgstream_gateway_stored_bytes",
                                    "Bytes of images stored and published", registry=r)
        self.images = Counter("imgstream_gateway_images",
                              "Images by outcome: stored, replayed (idempotent retry) or the error code",
                              ["outcome"], registry=r)
        self.stage = Histogram("imgstream_gateway_stage_duration_seconds",
                               "Time per upload stage (receive, inspect, store, publish)",
                               ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.rate_limited = Counter("imgstream_gateway_rate_limited",
                                    "Requests and parts refused by the per-producer rate limit", registry=r)
