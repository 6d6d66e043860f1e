from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from imgstream.windows import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    STAT_FIELDS,
    UPLOAD_STATS,
    Count,
    Interval,
    Lateness,
    Sum,
    WindowState,
    aggregate,
    classify,
    final_at,
    fires_at,
    from_millis,
    is_final,
    is_late,
    to_millis,
    window_bounds,
    window_end,
    window_start,
)

T = to_millis(datetime(2026, 11, 26, 10, 17, 42, 500000, tzinfo=timezone.utc))


def test_window_bounds_for_each_interval():
    assert from_millis(window_start(T, Interval.MINUTE)) == datetime(2026, 11, 26, 10, 17, tzinfo=timezone.utc)
    assert from_millis(window_end(T, Interval.MINUTE)) == datetime(2026, 11, 26, 10, 18, tzinfo=timezone.utc)
    assert from_millis(window_start(T, Interval.HOUR)) == datetime(2026, 11, 26, 10, tzinfo=timezone.utc)
    assert from_millis(window_start(T, Interval.DAY)) == datetime(2026, 11, 26, tzinfo=timezone.utc)
    assert from_millis(window_end(T, Interval.DAY)) == datetime(2026, 11, 27, tzinfo=timezone.utc)
    assert window_bounds(0, 10) == (0, 10)
    assert window_bounds(-1, 10) == (-10, 0)
    with pytest.raises(ValueError):
        window_start(5, 0)


@given(st.integers(-(10**15), 10**15), st.sampled_from(list(Interval)))
def test_window_contains_its_timestamp(ts, interval):
    start, end = window_bounds(ts, interval)
    assert start <= ts < end
    assert end - start == interval.millis
    assert start % interval.millis == 0
    assert window_bounds(start, interval) == window_bounds(end - 1, interval) == (start, end)


def test_interval_sizes():
    assert Interval.MINUTE.millis == MINUTE_MS and Interval("hour").millis == HOUR_MS and Interval.DAY.millis == DAY_MS


def test_lateness_and_finality_follow_flink_conventions():
    assert not is_late(101, 100) and is_late(100, 100)
    assert fires_at(60_000) == 59_999
    assert final_at(60_000, 5_000) == 64_999
    assert not is_final(60_000, 64_998, 5_000) and is_final(60_000, 64_999, 5_000)
    assert is_final(60_000, 59_999, 0)
    with pytest.raises(ValueError):
        final_at(60_000, -1)


def test_classify():
    minute = Interval.MINUTE
    assert classify(30_000, 10_000, minute, 5_000) == Lateness.ON_TIME
    assert classify(30_000, 59_999, minute, 5_000) == Lateness.LATE
    assert classify(30_000, 64_998, minute, 5_000) == Lateness.LATE
    assert classify(30_000, 64_999, minute, 5_000) == Lateness.TOO_LATE
    assert classify(30_000, 59_999, minute, 0) == Lateness.TOO_LATE


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**6))
def test_classify_is_consistent_with_window_life_cycle(ts, wm, lateness):
    c = classify(ts, wm, 60_000, lateness)
    end = window_end(ts, 60_000)
    if c is Lateness.ON_TIME:
        assert ts > wm
    elif c is Lateness.LATE:
        assert ts <= wm and not is_final(end, wm, lateness)
    else:
        assert is_final(end, wm, lateness)


def rec(status, size=10, kind=None):
    return {"status": status, "size": size, "duplicate_kind": kind}


RECORDS = [
    rec("accepted", 100),
    rec("duplicate", 50, "exact"),
    rec("duplicate", 25, "near"),
    rec("rejected", 999),
    rec("accepted", 1),
]


def test_upload_stats():
    assert aggregate(RECORDS) == {
        "uploads": 4,
        "bytes": 176,
        "accepted": 2,
        "duplicates_exact": 1,
        "duplicates_near": 1,
        "rejected": 1,
        "duplicates": 2,
    }
    assert aggregate([]) == dict.fromkeys((*STAT_FIELDS, "duplicates"), 0)


def test_small_aggregators():
    count = Count("n", lambda v: v > 0)
    total = Sum("s", lambda v: v, lambda v: v > 0)
    acc = count.create()
    for v in (1, -1, 2):
        acc = count.add(acc, v)
    assert count.result(acc) == 2
    acc = total.create()
    for v in (1, -1, 2):
        acc = total.add(acc, v)
    assert total.result(total.merge(acc, total.create())) == 3


records = st.builds(
    rec,
    st.sampled_from(["accepted", "duplicate", "rejected"]),
    st.integers(0, 1000),
    st.sampled_from([None, "exact", "near"]),
)


@given(st.lists(records, max_size=20), st.integers(0, 20))
def test_merge_of_split_aggregates_equals_whole(rs, cut):
    def fold(xs):
        acc = UPLOAD_STATS.create()
        for x in xs:
            acc = UPLOAD_STATS.add(acc, x)
        return acc

    merged = UPLOAD_STATS.merge(fold(rs[:cut]), fold(rs[cut:]))
    assert UPLOAD_STATS.result(merged) == aggregate(rs)
    assert UPLOAD_STATS.merge(fold(rs), UPLOAD_STATS.create()) == fold(rs)


def test_window_state_life_cycle():
    w = WindowState.open(0, 60_000)
    w = w.add(aggregate(RECORDS[:1])).add(aggregate(RECORDS[1:2]))
    assert (w.revision, w.fired, w.final) == (0, False, False)
    with pytest.raises(ValueError):
        w.add_late(aggregate(RECORDS[2:3]))
    w = w.fire()
    assert (w.revision, w.fired, w.final, w.late_events) == (1, True, False, 0)
    with pytest.raises(ValueError):
        w.add(aggregate(RECORDS[2:3]))
    assert w.on_watermark(60_000, 5_000) is None
    w = w.add_late(aggregate(RECORDS[2:3]))
    assert (w.revision, w.late_events) == (2, 1)
    final = w.on_watermark(64_999, 5_000)
    assert final is not None and final.final and final.revision == 3
    assert final.on_watermark(70_000, 5_000) is None
    with pytest.raises(ValueError):
        final.add_late(aggregate(RECORDS[3:4]))
    row = final.result()
    assert row["uploads"] == 3 and row["duplicates"] == 2 and row["window_end"] == 60_000
    assert row["revision"] == 3 and row["late_events"] == 1 and row["final"] is True
    assert WindowState.from_list(final.to_list()) == final


def test_final_without_lateness_is_the_first_version():
    w = WindowState.open(0, 60_000).add(aggregate(RECORDS))
    final = w.on_watermark(59_999, 0)
    assert final is not None and (final.revision, final.final) == (1, True)


@given(st.lists(records, max_size=20), st.integers(0, 20))
def test_on_time_plus_late_equals_everything(rs, cut):
    w = WindowState.open(0, 60_000)
    for r in rs[:cut]:
        w = w.add(aggregate([r]))
    w = w.fire()
    for r in rs[cut:]:
        w = w.add_late(aggregate([r]))
    row = w.result()
    assert {k: row[k] for k in aggregate([])} == aggregate(rs)
    assert row["late_events"] == len(rs[cut:])
    assert row["revision"] == 1 + len(rs[cut:])


def test_to_millis_requires_aware():
    with pytest.raises(ValueError):
        to_millis(datetime(2026, 1, 1))
    assert from_millis(to_millis(datetime(2026, 1, 1, tzinfo=timezone.utc))).year == 2026
