"""Token-bucket rate limiting with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstream.domain.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_wait_with_exact_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("p") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("p") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.acquire("p") == pytest.approx(0.25)  # refused requests take nothing
    clock.now += 0.25
    assert limiter.acquire("p") == 0.0


def test_refill_is_capped_at_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)
    clock.now += 3600
    assert limiter.available("p") == 5
    assert sum(limiter.acquire("p") == 0.0 for _ in range(10)) == 5


def test_producers_have_separate_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_zero_rate_disables_limiting() -> None:
    limiter = RateLimiter(rate=0, burst=0, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.acquire("p") == 0.0 for _ in range(1000))


def test_clock_stepping_back_refills_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.acquire("p")
    clock.now -= 100
    assert limiter.acquire("p") > 0


def test_bucket_table_is_bounded_lru() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock(), max_keys=2)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("a")  # refused, and "a" becomes most recently used
    limiter.acquire("c")  # evicts "b"
    assert set(limiter._buckets) == {"a", "c"}


def test_cost_above_burst_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=2, clock=Clock()).acquire("p", cost=3)


@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_never_grants_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    clock = Clock()
    start = clock.now
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    granted = 0
    for gap in gaps:
        clock.now += gap
        granted += limiter.acquire("p") == 0.0
    assert granted <= burst + rate * (clock.now - start) + 1e-9
