"""Clock skew (issue 16, item 5): event time is bounded by the Kafka append time."""

import pytest
from hypothesis import given, strategies as st

from imgstream.domain.clock import CLOCK_SKEW_TOLERANCE_MS, clamp_event_time

HOUR = 3_600_000
T = 1_767_225_600_000


def test_a_clock_hours_ahead_takes_the_append_time_and_reports_the_skew():
    out = clamp_event_time(T + 3 * HOUR, T)
    assert (out.event_time, out.skew_ms, out.clamped) == (T, 3 * HOUR, True)


def test_honest_and_slow_clocks_keep_their_time():
    assert clamp_event_time(T - 1_500, T).event_time == T - 1_500  # stamped, stored, then appended
    assert clamp_event_time(T - 2 * HOUR, T).event_time == T - 2 * HOUR  # behind: only its own uploads late
    assert not clamp_event_time(T + CLOCK_SKEW_TOLERANCE_MS, T).clamped
    assert clamp_event_time(T + CLOCK_SKEW_TOLERANCE_MS + 1, T).clamped
    assert clamp_event_time(T + HOUR, None).event_time == T + HOUR  # no append time: nothing to bound by
    with pytest.raises(ValueError):
        clamp_event_time(T, T, -1)


@given(st.integers(-10 * HOUR, 10 * HOUR), st.integers(0, 60_000))
def test_event_time_is_never_ahead_of_append_time_plus_tolerance(offset, tolerance):
    out = clamp_event_time(T + offset, T, tolerance)
    assert out.event_time <= T + tolerance
    assert out.event_time == min(T + offset, T) if out.clamped else out.event_time == T + offset
