"""Garbage collection in the pipeline's Python workers: on a schedule, young objects only.

CPython's automatic collector runs whenever 700 more container objects are alive than at its
last run, and every so often a full collection traverses *every* object of the process. A
``decide`` worker holds its shards' index (tuples and lists in the mirrors' dicts) and the
pending items, so those full collections grow with the index. Measured in the pipeline's
workers (``bench/flink_throughput.py``, 100,000 events at parallelism 2, 2026-12-05): the
collector took 13-17 % of each ``decide`` worker's CPU, a full collection 225 ms at ~45,000
images per worker (15 of them in 80 s), and the collections found almost nothing to free
(under 500 objects a minute: the job's data has no reference cycles). At a production index
of millions of images per worker each full collection would stall the worker for seconds.

The schedule (:class:`GcSchedule`) instead, once per worker process:

* automatic collection off;
* every ``young_every_s``: a collection, then :func:`gc.freeze` - what survived moves to the
  permanent generation, which collections skip, so the next one traverses only what was
  created since (its cost follows the ingest rate, not the index size);
* every ``full_every_s``: :func:`gc.unfreeze` first, so the collection is a full one (cycles
  among objects frozen earlier are found there), then freeze again.

Reference counting frees everything else as before, frozen or not. The job's entry point
passes the schedule to the workers as a global job parameter (:data:`JOB_PARAMETER`); the
pipeline's operators call :func:`install` in ``open``, and the first one in a worker starts
its collector thread. ``--python_gc_young_every_s=0`` leaves CPython's collector as it is.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)

#: The global job parameter carrying the schedule to the Python workers (:meth:`GcSchedule.to_parameter`).
JOB_PARAMETER = "imgstream.python-gc"
#: Default seconds between young collections: a minute of ingest is what each one traverses.
YOUNG_EVERY_S = 60
#: Default seconds between full collections (the only ones that see objects frozen earlier).
FULL_EVERY_S = 1800


class Collector(Protocol):
    """What :class:`ScheduledCollector` drives: the parts of the :mod:`gc` module it uses (the
    module itself is one; tests pass a fake)."""

    def collect(self) -> int: ...

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...


@dataclass(frozen=True)
class GcSchedule:
    """When a worker collects: young objects every ``young_every_s`` seconds, everything every
    ``full_every_s``; ``young_every_s == 0`` means CPython's automatic collector (no schedule)."""

    young_every_s: int = YOUNG_EVERY_S
    full_every_s: int = FULL_EVERY_S

    def __post_init__(self) -> None:
        if self.young_every_s < 0 or self.full_every_s < 0:
            raise ValueError(f"python gc intervals must be >= 0 seconds, got {self.young_every_s}, {self.full_every_s}")
        if self.young_every_s and self.full_every_s < self.young_every_s:
            raise ValueError(
                f"python_gc_full_every_s ({self.full_every_s}) must be at least python_gc_young_every_s "
                f"({self.young_every_s}): full collections are the only ones that see frozen objects"
            )

    @property
    def automatic(self) -> bool:
        return self.young_every_s == 0

    def to_parameter(self) -> str:
        """The job parameter's value: ``young,full`` seconds."""
        return f"{self.young_every_s},{self.full_every_s}"

    @classmethod
    def from_parameter(cls, text: str) -> "GcSchedule":
        """Parse :meth:`to_parameter`'s form; anything else is a :class:`ValueError` naming it."""
        young, sep, full = text.partition(",")
        try:
            if not sep:
                raise ValueError("missing ','")
            return cls(int(young), int(full))
        except ValueError as e:
            raise ValueError(f"job parameter {JOB_PARAMETER}={text!r} is not 'young_seconds,full_seconds': {e}") from None


@dataclass
class Collections:
    """What a worker's schedule has done so far (logged with each full collection)."""

    young: int = 0
    full: int = 0
    freed: int = 0
    seconds: float = 0.0


class ScheduledCollector:
    """Runs :class:`GcSchedule`'s collections against a clock; :meth:`due` is called by the
    worker's collector thread every ``young_every_s`` (and by tests with a fake clock)."""

    def __init__(self, schedule: GcSchedule, collector: Collector | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.schedule = schedule
        self.collector: Collector = collector or gc
        self.clock = clock
        self.stats = Collections()
        self.last_full = clock()

    def due(self) -> str:
        """Collect now: ``"full"`` when ``full_every_s`` has passed since the last full one,
        else ``"young"``. Either way the survivors are frozen afterwards."""
        started = self.clock()
        full = started - self.last_full >= self.schedule.full_every_s
        if full:
            self.collector.unfreeze()
        freed = self.collector.collect()
        self.collector.freeze()
        took = self.clock() - started
        self.stats.freed += freed
        self.stats.seconds += took
        if full:
            self.last_full = started
            self.stats.full += 1
            log.info("python gc: full collection took %.3f s and freed %d objects (so far %d young, %d full, "
                     "%.1f s, %d freed)", took, freed, self.stats.young, self.stats.full, self.stats.seconds,
                     self.stats.freed)  # fmt: skip
            return "full"
        self.stats.young += 1
        log.debug("python gc: young collection took %.3f s and freed %d objects", took, freed)
        return "young"


_installed: ScheduledCollector | None = None
_lock = threading.Lock()


def install(runtime_context: Any) -> ScheduledCollector | None:
    """Apply the job's schedule (the :data:`JOB_PARAMETER` of ``runtime_context``) to this
    worker process, once: the first call starts the collector thread, later ones return it.
    Without the parameter (mini-cluster tests, other jobs), or with automatic collection, the
    process keeps CPython's collector and this returns ``None``."""
    global _installed
    text = runtime_context.get_job_parameter(JOB_PARAMETER, "")
    if not text:
        return None
    schedule = GcSchedule.from_parameter(text)
    if schedule.automatic:
        return None
    with _lock:
        if _installed is None:
            _installed = start(schedule)
        return _installed


def start(schedule: GcSchedule) -> ScheduledCollector:
    """Turn CPython's automatic collection off and run ``schedule`` on a daemon thread."""
    scheduled = ScheduledCollector(schedule)
    gc.disable()
    gc.freeze()  # what the worker loaded to start (modules, the harness) is never garbage

    def run() -> None:
        wakeup = threading.Event()  # never set: the thread lives as long as the worker
        while not wakeup.wait(schedule.young_every_s):
            scheduled.due()

    threading.Thread(target=run, name="imgstream-python-gc", daemon=True).start()
    log.info("python gc: automatic collection off; young collections every %d s, full every %d s",
             schedule.young_every_s, schedule.full_every_s)  # fmt: skip
    return scheduled
