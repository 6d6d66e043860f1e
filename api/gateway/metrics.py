"""Prometheus metrics of the gateway: the request metrics every service has, plus the upload ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from api.common.httpkit import HttpMetrics

# Latency buckets from a 50 KB upload on loopback (a few ms) to a 25 MiB upload on a slow link.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class GatewayMetrics(HttpMetrics):
    """Every metric the gateway exports (``imgstream_gateway_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("imgstream_gateway", _LATENCY_BUCKETS, registry)
        r = self.registry
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
        self.deletions = Counter("imgstream_gateway_deletions",
                                 "DELETE /v1/images/{id} by outcome: delete (published), already_deleted, "
                                 "not_found", ["outcome"], registry=r)
        self.rate_limited = Counter("imgstream_gateway_rate_limited",
                                    "Requests and parts refused by the per-producer rate limit", registry=r)
