"""Event-time windows: window maths, lateness, finality, and the upload-statistics aggregators.

Conventions (Flink's): timestamps and watermarks are epoch milliseconds; a window is the
half-open interval ``[start, end)``; a watermark ``W`` promises no more events with
``ts <= W``, so an event is *late* when ``ts <= W`` on arrival; a window *fires* (its on-time
result is complete) once ``W >= end - 1`` and is *final* once ``W >= end - 1 + allowed_lateness``
(i.e. the watermark has passed the window end plus the allowed lateness).

Late events are never dropped silently:

* ``ON_TIME`` events (and late ones whose window has not fired yet) are accumulated and
  emitted when the window fires;
* events arriving after their window fired but before it is final update it: the row is
  re-emitted with ``revision + 1`` and ``late_events + 1``;
* ``TOO_LATE`` events (window already final) do not change a final row; they are recorded in
  the late-events table (and still get their image row and verdict).

:class:`WindowState` is that life cycle as a pure state machine. The aggregators follow the
create / add / merge / result shape so the same definitions serve the Flink job and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Generic, Iterable, Mapping, MutableMapping, Protocol, TypeVar

from imgstream.domain.timefmt import from_millis, to_millis
from imgstream.domain.dedup import KIND_EXACT, KIND_NEAR, STATUS_ACCEPTED, STATUS_DUPLICATE, STATUS_REJECTED

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class Interval(str, Enum):
    """The window sizes the platform reports. Days are UTC days."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def millis(self) -> int:
        return {Interval.MINUTE: MINUTE_MS, Interval.HOUR: HOUR_MS, Interval.DAY: DAY_MS}[self]


class Lateness(str, Enum):
    """How an event relates to the watermark when it reaches the windowing step."""

    ON_TIME = "on_time"
    LATE = "late"
    TOO_LATE = "too_late"


def _size(interval: Interval | int) -> int:
    size = interval.millis if isinstance(interval, Interval) else int(interval)
    if size <= 0:
        raise ValueError(f"window size must be > 0 ms, got {size}")
    return size


def window_start(ts: int, interval: Interval | int) -> int:
    """Start (ms) of the tumbling window holding ``ts``; windows are aligned to the epoch."""
    size = _size(interval)
    return ts - ts % size  # Python's % is non-negative for a positive size, also before 1970


def window_end(ts: int, interval: Interval | int) -> int:
    """Exclusive end (ms) of the tumbling window holding ``ts``."""
    return window_start(ts, interval) + _size(interval)


def window_bounds(ts: int, interval: Interval | int) -> tuple[int, int]:
    """``(start, end)`` of the window holding ``ts``."""
    start = window_start(ts, interval)
    return start, start + _size(interval)


def fires_at(end: int) -> int:
    """Watermark at which a window ``[.., end)`` fires (its max timestamp)."""
    return end - 1


def final_at(end: int, allowed_lateness: int) -> int:
    """Watermark from which a window ``[.., end)`` is final."""
    if allowed_lateness < 0:
        raise ValueError("allowed_lateness must be >= 0")
    return end - 1 + allowed_lateness


def is_late(ts: int, watermark: int) -> bool:
    """Whether an event with ``ts`` is late for ``watermark``."""
    return ts <= watermark


def is_final(end: int, watermark: int, allowed_lateness: int) -> bool:
    """Whether the window ending at ``end`` is final at ``watermark``."""
    return watermark >= final_at(end, allowed_lateness)


def classify(ts: int, watermark: int, interval: Interval | int, allowed_lateness: int) -> Lateness:
    """ON_TIME / LATE / TOO_LATE for an event with ``ts`` arriving at ``watermark``."""
    if not is_late(ts, watermark):
        return Lateness.ON_TIME
    if is_final(window_end(ts, interval), watermark, allowed_lateness):
        return Lateness.TOO_LATE
    return Lateness.LATE


# --- aggregators --------------------------------------------------------------------------

A = TypeVar("A")
V = TypeVar("V", contravariant=True)
R = TypeVar("R", covariant=True)


class Aggregator(Protocol[A, V, R]):
    """create / add / merge / result: ``merge`` must be associative with ``create()`` as unit."""

    name: str

    def create(self) -> A: ...

    def add(self, acc: A, value: V) -> A: ...

    def merge(self, a: A, b: A) -> A: ...

    def result(self, acc: A) -> R: ...


Record = Mapping[str, Any]
"""A verdict row as aggregated: needs ``status``, ``duplicate_kind`` and ``size``."""


@dataclass(frozen=True)
class Count(Generic[V]):
    """Counts values matching ``predicate``."""

    name: str
    predicate: Callable[[V], bool]

    def create(self) -> int:
        return 0

    def add(self, acc: int, value: V) -> int:
        return acc + 1 if self.predicate(value) else acc

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> int:
        return acc


@dataclass(frozen=True)
class Sum(Generic[V]):
    """Sums ``measure(value)`` over values matching ``predicate``."""

    name: str
    measure: Callable[[V], int]
    predicate: Callable[[V], bool]

    def create(self) -> int:
        return 0

    def add(self, acc: int, value: V) -> int:
        return acc + self.measure(value) if self.predicate(value) else acc

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> int:
        return acc


def is_upload(record: Record) -> bool:
    """A valid upload (accepted or duplicate); rejected events and dropped replays are not."""
    return record.get("status") in (STATUS_ACCEPTED, STATUS_DUPLICATE)


def _status(status: str) -> Callable[[Record], bool]:
    return lambda record: record.get("status") == status


def _duplicate(kind: str) -> Callable[[Record], bool]:
    return lambda record: record.get("status") == STATUS_DUPLICATE and record.get("duplicate_kind") == kind


def _size_of(record: Record) -> int:
    return int(record.get("size") or 0)


#: The upload statistics of one window and group, in column order.
STAT_AGGREGATORS: tuple[Count[Record] | Sum[Record], ...] = (
    Count("uploads", is_upload),
    Sum("bytes", _size_of, is_upload),
    Count("accepted", _status(STATUS_ACCEPTED)),
    Count("duplicates_exact", _duplicate(KIND_EXACT)),
    Count("duplicates_near", _duplicate(KIND_NEAR)),
    Count("rejected", _status(STATUS_REJECTED)),
)
STAT_FIELDS: tuple[str, ...] = tuple(a.name for a in STAT_AGGREGATORS)

Stats = dict[str, int]


class UploadStats:
    """The composite aggregator over :data:`STAT_AGGREGATORS`; accumulator = ``{name: int}``."""

    name = "upload_stats"

    def create(self) -> Stats:
        return {a.name: a.create() for a in STAT_AGGREGATORS}

    def add(self, acc: Stats, value: Record) -> Stats:
        return {a.name: a.add(acc[a.name], value) for a in STAT_AGGREGATORS}

    def merge(self, a: Stats, b: Stats) -> Stats:
        return {agg.name: agg.merge(a.get(agg.name, 0), b.get(agg.name, 0)) for agg in STAT_AGGREGATORS}

    def result(self, acc: Stats) -> Stats:
        out = {a.name: a.result(acc[a.name]) for a in STAT_AGGREGATORS}
        out["duplicates"] = out["duplicates_exact"] + out["duplicates_near"]
        return out


UPLOAD_STATS = UploadStats()


def aggregate(records: Iterable[Record]) -> Stats:
    """Fold records with :data:`UPLOAD_STATS` (a convenience for tests and batch use)."""
    acc = UPLOAD_STATS.create()
    for record in records:
        acc = UPLOAD_STATS.add(acc, record)
    return UPLOAD_STATS.result(acc)


# --- the window life cycle ----------------------------------------------------------------


@dataclass(frozen=True)
class WindowState:
    """One window of one group: accumulated stats, whether it fired, revision and finality.

    Life cycle, driven by the watermark of the one operator that owns the window:

    * events before the window fires are :meth:`add`-ed silently;
    * :meth:`fire` (watermark reached ``end - 1``) yields revision 1 (the on-time result);
    * :meth:`add_late` (an event after firing, before final) yields the next revision with
      ``late_events + 1``;
    * :meth:`on_watermark` yields the final revision once ``end - 1 + allowed_lateness`` is
      reached; after that nothing changes it (too-late events are recorded elsewhere).

    Every emitted version is the whole row (see :meth:`result`).
    """

    start: int
    end: int
    stats: Mapping[str, int]
    revision: int = 0
    late_events: int = 0
    fired: bool = False
    final: bool = False

    @classmethod
    def open(cls, start: int, end: int) -> "WindowState":
        return cls(start, end, UPLOAD_STATS.create())

    def _merged(self, partial: Mapping[str, int]) -> dict[str, int]:
        return UPLOAD_STATS.merge(dict(self.stats), dict(partial))

    def add(self, partial: Mapping[str, int]) -> "WindowState":
        """Accumulate before the window fires (no new version)."""
        if self.fired:
            raise ValueError("window already fired: use add_late")
        return replace(self, stats=self._merged(partial))

    def fire(self) -> "WindowState":
        """The on-time version (revision 1)."""
        if self.fired:
            raise ValueError("window already fired")
        return replace(self, fired=True, revision=self.revision + 1)

    def add_late(self, partial: Mapping[str, int], events: int = 1) -> "WindowState":
        """Merge ``events`` late events into a fired window that is not final: a new version."""
        if self.final:
            raise ValueError("window is final; a too-late event must go to the late-events table")
        if not self.fired:
            raise ValueError("window has not fired: use add")
        return replace(
            self, stats=self._merged(partial), revision=self.revision + 1, late_events=self.late_events + events
        )

    def on_watermark(self, watermark: int, allowed_lateness: int) -> "WindowState | None":
        """The final version if ``watermark`` makes the window final now, else ``None``."""
        if self.final or not is_final(self.end, watermark, allowed_lateness):
            return None
        return replace(self, fired=True, final=True, revision=self.revision + 1)

    def result(self) -> dict[str, Any]:
        """The row: bounds, stats (with ``duplicates``), revision, late_events, final."""
        row: dict[str, Any] = {"window_start": self.start, "window_end": self.end}
        row.update(UPLOAD_STATS.result(dict(self.stats)))
        row.update(revision=self.revision, late_events=self.late_events, final=self.final)
        return row

    def to_list(self) -> list[Any]:
        """Plain form for Flink state (no pickled classes in savepoints)."""
        return [self.start, self.end, dict(self.stats), self.revision, self.late_events, self.fired, self.final]

    @classmethod
    def from_list(cls, data: list[Any]) -> "WindowState":
        return cls(int(data[0]), int(data[1]), dict(data[2]), int(data[3]), int(data[4]), bool(data[5]), bool(data[6]))


# --- the windows of a verdict stream ------------------------------------------------------

#: Key of the finalised-through watermark in a :class:`WindowBook`'s ``progress`` mapping.
FINALISED_THROUGH = "finalised_through"


class WindowBook:
    """Every open upload-statistics window of a verdict stream, driven by one watermark.

    Windows are per ``window_ms`` x producer x content type and live in ``store``, a mapping of
    plain lists (``"start|producer|content_type" -> [producer, content_type, state]``), so a
    Flink ``MapState`` can hold them. Changes are kept in memory and written back by
    :meth:`flush`, once per batch of verdicts rather than once per verdict.

    * :meth:`add` counts one verdict by its lateness on arrival: on time (or late into a window
      that has not fired) it accumulates; late into a fired window it yields a new revision;
      too late it changes nothing (the caller records it as a late event).
    * :meth:`advance` fires and finalises the windows a watermark has passed; a final window
      leaves the book.

    **Restores.** Watermarks are not part of a Flink checkpoint: after a restore the operator
    sees ``Long.MIN_VALUE`` until the first new watermark, while the final windows are already
    gone from ``store``. The book therefore keeps the watermark it has advanced to (the
    *finalised-through* point) in ``progress``, a second mapping the operator checkpoints too:
    :meth:`classify` judges lateness against ``max(watermark, finalised_through)`` and
    :meth:`add` never opens a window that is final by that point, so a restore can neither
    count a too-late event as on time nor overwrite a final row with a reopened one.
    """

    def __init__(
        self,
        window_ms: int,
        allowed_lateness_ms: int,
        store: MutableMapping[str, Any],
        progress: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self._store = store
        self._progress: MutableMapping[str, Any] = {} if progress is None else progress
        self._live: dict[str, tuple[str, str, WindowState]] | None = None
        self._dirty: set[str] = set()
        self._next_due: int | None = None
        self._finalised_through: int | None = None
        self._progress_dirty = False

    @property
    def live(self) -> dict[str, tuple[str, str, WindowState]]:
        """The open windows, decoded from the store on first use."""
        if self._live is None:
            self._live = {
                key: (value[0], value[1], WindowState.from_list(value[2])) for key, value in self._store.items()
            }
            self._next_due = min((self._due(state) for _, _, state in self._live.values()), default=None)
        return self._live

    def reset(self) -> None:
        """Forget the decoded windows (the store changed underneath); unflushed changes are lost."""
        self._live, self._dirty, self._next_due = None, set(), None
        self._finalised_through, self._progress_dirty = None, False

    @property
    def finalised_through(self) -> int | None:
        """The highest watermark the book has advanced to (every window final by it is final
        and gone), ``None`` before the first :meth:`advance`; survives a restore."""
        if self._finalised_through is None:
            stored = self._progress.get(FINALISED_THROUGH)
            self._finalised_through = None if stored is None else int(stored)
        return self._finalised_through

    def effective_watermark(self, watermark: int) -> int:
        """``watermark``, never below the finalised-through point (after a restore the
        operator's watermark restarts at ``Long.MIN_VALUE``)."""
        floor = self.finalised_through
        return watermark if floor is None or watermark >= floor else floor

    def classify(self, event_time: int, watermark: int) -> Lateness:
        """Lateness of an event arriving at ``watermark``, judged against the effective watermark."""
        return classify(event_time, self.effective_watermark(watermark), self.window_ms, self.allowed_lateness_ms)

    def is_closed(self, window_end_ms: int) -> bool:
        """Whether the window ending at ``window_end_ms`` is final by the finalised-through point."""
        floor = self.finalised_through
        return floor is not None and is_final(window_end_ms, floor, self.allowed_lateness_ms)

    def deadlines(self, event_time: int) -> tuple[int, int]:
        """Watermarks at which the window of ``event_time`` fires and becomes final (timers)."""
        end = window_start(event_time, self.window_ms) + self.window_ms
        return fires_at(end), final_at(end, self.allowed_lateness_ms)

    def add(self, record: Record, lateness: Lateness, watermark: int) -> dict[str, Any] | None:
        """Count ``record`` (a verdict with ``event_time``, ``producer``, ``content_type``)
        that arrived at ``watermark``; the window's new version if it had fired, else ``None``.

        Like a Flink window, one the watermark has passed fires on its first event: a late
        event opening a window of its group yields revision 2 (1 being the empty on-time one).
        A window final by :attr:`finalised_through` is never opened again, whatever
        ``lateness`` says (its final row is written; see :meth:`classify`).
        """
        if lateness is Lateness.TOO_LATE:
            return None
        watermark = self.effective_watermark(watermark)
        event_time = int(record["event_time"])
        producer, content_type = str(record["producer"]), str(record["content_type"])
        start = window_start(event_time, self.window_ms)
        key = f"{start}|{producer}|{content_type}"
        live = self.live
        if key in live:
            state = live[key][2]
        else:
            if self.is_closed(start + self.window_ms):
                return None
            state = WindowState.open(start, start + self.window_ms)
            due = self._due(state)
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        partial = UPLOAD_STATS.add(UPLOAD_STATS.create(), record)
        version = None
        if not state.fired and watermark >= fires_at(state.end):
            state = state.fire()
        if state.fired:
            state = state.add_late(partial)
            version = _row(producer, content_type, state)
        else:
            state = state.add(partial)
        live[key] = (producer, content_type, state)
        self._dirty.add(key)
        return version

    def advance(self, watermark: int) -> list[dict[str, Any]]:
        """Versions of the windows ``watermark`` fires or finalises, oldest window first."""
        live = self.live
        floor = self.finalised_through
        if floor is None or watermark > floor:
            self._finalised_through, self._progress_dirty = watermark, True
        if self._next_due is None or watermark < self._next_due:
            return []
        rows = []
        for key in sorted(live, key=lambda k: (live[k][2].start, k)):
            producer, content_type, state = live[key]
            final = state.on_watermark(watermark, self.allowed_lateness_ms)
            if final is not None:  # (a window that never fired becomes final as revision 1)
                rows.append(_row(producer, content_type, final))
                del live[key]
            elif not state.fired and watermark >= fires_at(state.end):
                state = state.fire()
                rows.append(_row(producer, content_type, state))
                live[key] = (producer, content_type, state)
            else:
                continue
            self._dirty.add(key)
        self._next_due = min((self._due(state) for _, _, state in live.values()), default=None)
        return rows

    def flush(self) -> None:
        """Write the changed windows back to the store (final ones are removed)."""
        live = self.live
        for key in self._dirty:
            if key in live:
                producer, content_type, state = live[key]
                self._store[key] = [producer, content_type, state.to_list()]
            elif key in self._store:
                del self._store[key]
        self._dirty.clear()
        if self._progress_dirty:
            self._progress[FINALISED_THROUGH] = self._finalised_through
            self._progress_dirty = False

    def _due(self, state: WindowState) -> int:
        return final_at(state.end, self.allowed_lateness_ms) if state.fired else fires_at(state.end)


def _row(producer: str, content_type: str, state: WindowState) -> dict[str, Any]:
    return {**state.result(), "producer": producer, "content_type": content_type}


def coalesce(versions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last version of each window among ``versions``: a step may revise a window once per late
    event, and every version is the whole row, so the last alone leaves the same table."""
    last: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for v in versions:
        last.pop(key := (v["window_start"], v["producer"], v["content_type"]), None)  # ordered by last change
        last[key] = v
    return list(last.values())
