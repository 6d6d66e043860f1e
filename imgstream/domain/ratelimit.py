"""Per-producer token-bucket rate limiting: pure logic with an injectable clock.

Each producer has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second; one image
costs one token. A request that finds too few tokens is told how long to wait (``Retry-After``)
and consumes nothing, so a client that honours the hint succeeds on its next try.

The limiter is per process: behind a load balancer with N gateways a producer gets up to N times
the rate. That is deliberate (no shared state on the hot path); size ``rate`` per instance.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by producer.

    ``rate <= 0`` disables limiting. At most ``max_keys`` buckets are kept; the least recently
    used is dropped first (a dropped bucket comes back full, which only ever errs towards
    letting a producer through).
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if burst < 1 and rate > 0:
            raise ValueError("burst must allow at least one request")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self.burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)  # a clock that steps back refills nothing
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        return bucket

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key``. Returns 0.0 if granted, else the seconds to wait until
        they would be (nothing is taken then)."""
        if not self.enabled:
            return 0.0
        if cost > self.burst:
            raise ValueError(f"cost {cost} can never be granted with burst {self.burst}")
        bucket = self._bucket(key, self._clock())
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def available(self, key: str) -> float:
        """Tokens ``key`` could spend right now (for metrics and tests)."""
        if not self.enabled:
            return float("inf")
        return self._bucket(key, self._clock()).tokens
