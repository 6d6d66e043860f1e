"""The test harness's own logic (flink_jobs.testing): the plan clock heartbeats follow, and
the report of verdicts that differ from the truth."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from flink_jobs import testing
from flink_jobs.generator import plan, truth


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_the_plan_clock_never_passes_a_planned_event_still_to_come():
    planned = plan(seed=3, originals=30, exact_copies=5, near_copies=5, replays=5, malformed=5, step_ms=125)
    clock = testing.PlanClock(planned)
    times = [p.event_time for p in planned]
    for i in range(len(planned) - 1):
        clock.sent(i)
        beat = _ms(clock.now())
        assert all(t is None or beat <= t for t in times[i + 1:]), i
    assert _ms(clock.now()) == max(p.sent_at for p in planned[:-1] if p.sent_at is not None)


def test_the_plan_clock_starts_at_the_first_planned_time_and_runs_on_after_the_plan(monkeypatch):
    planned = plan(seed=3, originals=10, step_ms=1_000)
    clock = testing.PlanClock(planned)
    assert _ms(clock.now()) == planned[0].sent_at  # before anything is sent: no later than the first event
    ticks = iter([100.0, 102.5])
    monkeypatch.setattr(testing.time, "monotonic", lambda: next(ticks))
    clock.sent(len(planned) - 1)  # the last value: the plan is done at monotonic 100.0
    assert _ms(clock.now()) == planned[-1].sent_at + 2_500  # then it follows the wall clock


class _Session:
    """Just enough of a Cassandra session for the mismatch report: rows by image id."""

    def __init__(self, rows: dict[str, SimpleNamespace]) -> None:
        self.rows = rows

    def prepare(self, query: str) -> str:
        return query

    def execute(self, query: str, params: tuple[str]) -> SimpleNamespace:
        return SimpleNamespace(one=lambda: self.rows.get(params[0]))


def _row(verdict, image_id: str, **changes) -> SimpleNamespace:
    fields = dict(image_id=image_id, status=verdict.status, duplicate_of=verdict.duplicate_of,
                  duplicate_kind=verdict.duplicate_kind, distance=verdict.distance, lateness="on_time",
                  received_at=datetime(2026, 1, 1, tzinfo=timezone.utc), source_partition=1, source_offset=7,
                  processed_at=None)  # fmt: skip
    fields.update(changes)
    return SimpleNamespace(**fields)


def test_a_wrong_verdict_is_reported_with_the_truth_beside_it():
    expected = truth(plan(seed=5, originals=20, exact_copies=5, near_copies=5, replays=0, malformed=0))
    rows = {i: _row(v, i) for i, v in expected.verdicts.items()}
    victim = next(i for i, v in expected.verdicts.items() if v.status == "duplicate")
    rows[victim] = _row(expected.verdicts[victim], victim, status="accepted", duplicate_of=None,
                        duplicate_kind=None, distance=None, lateness="late")  # fmt: skip
    with pytest.raises(AssertionError) as failed:
        asyncio.run(testing.expect_verdicts(_Session(rows), expected, "rows", deadline_s=5))
    message = str(failed.value)
    assert f"1 of {len(rows)} verdicts differ" in message
    assert victim in message and "lateness=late" in message and "at 1/7" in message
    assert f"truth ('duplicate', '{expected.verdicts[victim].duplicate_of}'" in message


def test_right_verdicts_pass_and_come_back():
    expected = truth(plan(seed=5, originals=20, exact_copies=5, near_copies=5, replays=0, malformed=0))
    rows = {i: _row(v, i) for i, v in expected.verdicts.items()}
    got = asyncio.run(testing.expect_verdicts(_Session(rows), expected, "rows", deadline_s=5))
    assert {r.image_id for r in got} == set(expected.verdicts)
