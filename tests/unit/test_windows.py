from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from imgstream.domain.windows import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    STAT_FIELDS,
    UPLOAD_STATS,
    WindowBook,
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


# --- WindowBook: the windows of a verdict stream -------------------------------------------

W, L = 60_000, 120_000  # window, allowed lateness


def _verdict(ts, producer="p", status="accepted", size=10):
    return {"event_time": ts, "producer": producer, "content_type": "image/png", "status": status, "size": size}


def test_window_book_fires_revises_and_finalises_then_forgets():
    store = {}
    book = WindowBook(W, L, store)
    assert book.deadlines(61_000) == (119_999, 239_999)
    assert book.add(_verdict(1_000), Lateness.ON_TIME, 0) is None
    assert book.add(_verdict(2_000, "q"), Lateness.ON_TIME, 0) is None
    assert book.add(_verdict(61_000), Lateness.ON_TIME, 0) is None
    assert book.advance(59_998) == []
    fired = book.advance(59_999)
    assert [(r["producer"], r["revision"], r["uploads"], r["final"]) for r in fired] == [
        ("p", 1, 1, False), ("q", 1, 1, False),
    ]  # fmt: skip
    late = book.add(_verdict(3_000, status="rejected"), Lateness.LATE, 60_000)
    assert late is not None and (late["revision"], late["late_events"], late["rejected"], late["uploads"]) == (2, 1, 1, 1)
    assert book.add(_verdict(4_000), Lateness.TOO_LATE, 180_000) is None  # never changes a row
    # a late event opening its group's window: it fires on arrival (revision 1 was empty)
    opened = book.add(_verdict(5_000, "r"), Lateness.LATE, 60_000)
    assert opened is not None and (opened["revision"], opened["late_events"], opened["uploads"]) == (2, 1, 1)
    book.flush()
    assert len(store) == 4
    final = book.advance(179_999)
    assert [(r["window_start"], r["producer"], r["revision"], r["final"]) for r in final] == [
        (0, "p", 3, True), (0, "q", 2, True), (0, "r", 3, True), (60_000, "p", 1, False),
    ]  # fmt: skip
    book.flush()
    assert list(store) == ["60000|p|image/png"]  # final windows leave the store


def test_window_book_fires_and_finalises_in_one_jump():
    book = WindowBook(W, 0, {})
    book.add(_verdict(1_000), Lateness.ON_TIME, 0)
    rows = book.advance(10**9)
    assert [(r["revision"], r["final"]) for r in rows] == [(1, True)]
    assert book.live == {}


arrivals = st.lists(
    st.tuples(st.integers(0, 5 * W), st.sampled_from(["p", "q"]), st.integers(0, 3 * W)), max_size=40
)


@given(arrivals, st.integers(0, 40))
def test_window_book_final_rows_count_every_event_not_too_late_and_survive_a_restore(events, cut):
    """Arrivals at a growing watermark: final rows equal the aggregate of every verdict that
    was not too late; revisions grow by one (from 2 when a late event opened the window);
    and a book rebuilt from its flushed store at any
    point (a restore) continues exactly like one that never stopped."""

    def run(restore_at):
        store, out, counted = {}, [], []
        book = WindowBook(W, L, store)
        watermark = -1
        for i, (ts, producer, step) in enumerate(events):
            if i == restore_at:
                book.flush()
                book = WindowBook(W, L, dict(store))
                store = book._store
            lateness = classify(ts, watermark, W, L)
            version = book.add(_verdict(ts, producer), lateness, watermark)
            out.extend([version] if version else [])
            if lateness is not Lateness.TOO_LATE:
                counted.append((window_start(ts, W), producer))
            watermark += step
            out.extend(book.advance(watermark))
            book.flush()
        out.extend(book.advance(10**12))
        book.flush()
        assert store == {}
        return out, counted

    out, counted = run(None)
    assert run(cut)[0] == out
    finals = {(r["window_start"], r["producer"]): r for r in out if r["final"]}
    assert sum(r["final"] for r in out) == len(finals)
    assert {k: v["uploads"] for k, v in finals.items()} == {k: counted.count(k) for k in set(counted)}
    for key, final in finals.items():
        revisions = [r["revision"] for r in out if (r["window_start"], r["producer"]) == key]
        assert revisions[0] in (1, 2) and revisions == list(range(revisions[0], final["revision"] + 1))


# --- restores: the finalised-through point (issue 16, item 2) ----------------------------

LONG_MIN = -(2**63)


def test_a_restored_book_never_reopens_a_final_window():
    """Watermarks are not checkpointed: after a restore the operator sees Long.MIN_VALUE.
    The book keeps the point it finalised through, classifies against it and refuses to open
    a window that is final by it (which would overwrite the final row with a near-empty one)."""
    store, progress = {}, {}
    book = WindowBook(W, L, store, progress)
    for ts in (1_000, 2_000, 3_000):
        book.add(_verdict(ts), Lateness.ON_TIME, 0)
    rows = book.advance(fires_at(W) + L)  # final now
    assert [(r["uploads"], r["final"]) for r in rows] == [(3, True)]
    book.flush()
    assert store == {} and book.finalised_through == fires_at(W) + L

    restored = WindowBook(W, L, dict(store), dict(progress))  # a restore from that checkpoint
    assert restored.effective_watermark(LONG_MIN) == fires_at(W) + L
    assert restored.classify(4_000, LONG_MIN) is Lateness.TOO_LATE
    # even when a caller still says "on time", the final window is not opened again
    assert restored.add(_verdict(4_000), Lateness.ON_TIME, LONG_MIN) is None
    assert restored.advance(fires_at(W) + L + 1) == []
    assert restored.live == {}
    # a window that is not final yet still counts
    assert restored.classify(W + 1_000, LONG_MIN) is Lateness.LATE
    assert restored.add(_verdict(W + 1_000), Lateness.LATE, LONG_MIN) is not None


@given(arrivals, st.integers(0, 40))
def test_window_book_restored_without_a_watermark_continues_like_one_that_never_stopped(events, cut):
    """A book rebuilt from its flushed store and progress whose operator sees no watermark
    (Long.MIN_VALUE) until the next step classifies and counts exactly as before the restore."""

    def run(restore_at):
        store, progress, out = {}, {}, []
        book = WindowBook(W, L, store, progress)
        watermark = -1
        for i, (ts, producer, step) in enumerate(events):
            seen = watermark
            if i == restore_at:
                book.flush()
                book = WindowBook(W, L, dict(store), dict(progress))
                store, progress, seen = book._store, book._progress, LONG_MIN
            lateness = book.classify(ts, seen)
            version = book.add(_verdict(ts, producer), lateness, book.effective_watermark(seen))
            out.extend([(lateness, version)] if version else [(lateness, None)])
            watermark += step
            out.extend((None, row) for row in book.advance(watermark))
            book.flush()
        out.extend((None, row) for row in book.advance(10**12))
        return out

    assert run(cut) == run(None)


# --- issue 17: windows sharded by (producer, window), revisions coalesced per step ---------


@given(arrivals, st.integers(1, 8))
def test_window_books_sharded_by_producer_and_window_end_in_the_rows_of_one_book(events, shards):
    """Each shard's book sees only its windows' verdicts and advances with the same watermark:
    the final rows are those of one book over everything, and coalescing each step's versions
    leaves the same final table with at most one row per window and step."""
    from imgstream.domain.sharding import ShardPlan
    from imgstream.domain.hashing import BandPlan
    from imgstream.domain.windows import coalesce

    plan = ShardPlan(BandPlan.for_distance(6), shards=shards)

    def run(sharded):
        books = {}
        written, steps, watermark = [], [], -1
        for ts, producer, step in events:
            key = plan.window_shard(producer, window_start(ts, W), "image/png") if sharded else 0
            book = books.setdefault(key, WindowBook(W, L, {}))
            lateness = book.classify(ts, watermark)
            version = book.add(_verdict(ts, producer), lateness, watermark)
            out = [version] if version else []
            watermark += step
            for b in books.values():
                out.extend(b.advance(watermark))
            steps.append(out)
        steps.append([r for b in books.values() for r in b.advance(10**12)])
        table = {}
        for out in steps:
            versions = coalesce(out) if sharded else out
            written.extend(versions)
            for row in versions:
                table[(row["window_start"], row["producer"])] = row
        return table, written

    one, every = run(False)
    table, coalesced = run(True)
    assert table == one
    assert len(coalesced) <= len(every)


def test_coalesce_keeps_the_last_version_of_each_window():
    from imgstream.domain.windows import coalesce

    rows = [
        {"window_start": 0, "producer": "p", "content_type": "a", "revision": 2},
        {"window_start": 0, "producer": "q", "content_type": "a", "revision": 1},
        {"window_start": 0, "producer": "p", "content_type": "a", "revision": 3},
    ]
    assert [(r["producer"], r["revision"]) for r in coalesce(rows)] == [("q", 1), ("p", 3)]
    assert coalesce([]) == []
