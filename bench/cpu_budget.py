"""CPU seconds used by each component of the local stack, to report where a benchmark's time goes.

A component is the process in its pid file (``local-stack/procs.py``) with its process group
and its descendants: the TaskManager's JVM with its PyFlink workers, the postmaster with its
backends (which start sessions of their own). The workers of a bounded job exit with it, and
an exited process's CPU is not always charged to an ancestor (one whose parent was killed is
re-parented), so a :class:`CpuMeter` samples every process while a job runs and keeps the last
figure it saw of each.

On a machine with few cores, throughput is bounded by the CPU all components spend per event,
not only the job's: the pipeline's writes make Cassandra, the CDC agent, Kafka, Kafka Connect and
PostgreSQL work too, while a pass-through's output wakes none of them. :func:`report` prints
milliseconds of CPU per event for each, for jobs measured one after the other.

    async with metered(run_dir) as meter: ...job...
    meter.used()  # component -> CPU seconds
    used_between(meter.timeline, t0, t1)  # the same between two moments of the block (steady state)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from bisect import bisect_left
from pathlib import Path
from typing import AsyncIterator, Mapping

sys.path.append(str(Path(__file__).resolve().parents[1] / "local-stack"))

import procs  # noqa: E402  (local-stack/procs.py: the stack's pid files and /proc reading)

CHILDREN = " children"
#: The TaskManager's Python workers.
TM_WORKERS = "flink-taskmanager" + CHILDREN
#: Those of them a :class:`CpuMeter` given a ``writer_port`` saw connected to it (Cassandra): the
#: writer's (``cassandra: write steps``), counted apart under "flink python" so a report can
#: show them (:func:`writer_share`); the others run ``decide``.
WRITERS = "flink-taskmanager writers"
#: Columns of the report: stack components grouped as an operator would read them. A
#: component's own process is charged to its name, the rest to ``"<name> children"``; ``*``
#: takes both.
GROUPS: Mapping[str, tuple[str, ...]] = {
    "flink tm (jvm)": ("flink-taskmanager",),
    "flink python": (TM_WORKERS, WRITERS),
    "flink jm": ("flink-jobmanager*",),
    "kafka": ("kafka*",),
    "cassandra": ("cassandra*",),
    "cdc+connect+pg": ("cassandra-cdc*", "connect*", "postgres*"),
    "rest": ("s3*", "gateway*", "stats-api*", "heartbeat*"),
}
#: How often a :func:`metered` block samples: a process that exits between two samples loses
#: at most this much of its CPU from the figures.
SAMPLE_EVERY_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK")


def _members(run_dir: Path) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, start time) -> (component, CPU seconds so far) of every process of a component;
    a component's own process is named as it is, the others ``"<name> children"``."""
    table = procs.process_table()
    pids = procs.PidFiles(run_dir)
    leaders = {}
    for pid_file in run_dir.glob("*.pid"):
        tracked = pids.read(pid_file.stem)
        stat = table.get(tracked.pid) if tracked else None
        if tracked and stat is not None and stat.start_ticks == tracked.start_ticks:  # not a recycled pid
            leaders[tracked.pid] = tracked.name
    owner = {pid: leaders[stat.pgrp] for pid, stat in table.items() if stat.pgrp in leaders}
    for leader, name in leaders.items():  # descendants in other groups (postgres backends)
        for pid in [leader, *procs.descendants(leader, table)]:
            owner.setdefault(pid, name)
    return {
        (pid, table[pid].start_ticks): (name if pid in leaders else name + CHILDREN, table[pid].cpu_ticks / _TICK)
        for pid, name in owner.items()
    }


def connected_to(port: int, pids: list[int]) -> set[int]:
    """The processes of ``pids`` with a TCP connection to remote ``port`` (any address)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        found.add(pid)
                        break
    return found


class CpuMeter:
    """CPU used by each component between the first :meth:`sample` and the last.

    A process seen in the first sample counts from what it had used then; one that appears
    later counts from zero (it started in between); one that has gone counts what it had used
    when last seen.
    """

    def __init__(self, run_dir: Path, writer_port: int | None = None) -> None:
        self.run_dir = run_dir
        self.writer_port = writer_port
        #: TaskManager workers seen connected to ``writer_port``: writers for good (a writer closes
        #: its connection when its job ends, before it exits), and not looked at again.
        self._writers: set[tuple[int, int]] = set()
        self._first: dict[tuple[int, int], float] | None = None
        self._last: dict[tuple[int, int], tuple[str, float]] = {}
        #: ``(time.time(), used())`` at every sample: what :func:`used_between` reads.
        self.timeline: list[tuple[float, dict[str, float]]] = []

    def sample(self) -> None:
        members = _members(self.run_dir)
        if self.writer_port:
            unknown = [key for key, (name, _) in members.items() if name == TM_WORKERS and key not in self._writers]
            connected = connected_to(self.writer_port, [pid for pid, _ in unknown]) if unknown else set()
            self._writers.update(key for key in unknown if key[0] in connected)
            members.update({key: (WRITERS, members[key][1]) for key in self._writers if key in members})
        if self._first is None:
            self._first = {key: seconds for key, (_, seconds) in members.items()}
        self._last.update(members)
        self.timeline.append((time.time(), self.used()))

    def used(self) -> dict[str, float]:
        """Component -> CPU seconds between the first sample and the last."""
        first = self._first or {}
        used: dict[str, float] = {}
        for key, (name, seconds) in self._last.items():
            used[name] = used.get(name, 0.0) + max(0.0, seconds - first.get(key, 0.0))
        return used


@contextlib.asynccontextmanager
async def metered(run_dir: Path, every_s: float = SAMPLE_EVERY_S, writer_port: int | None = None) -> AsyncIterator[CpuMeter]:
    """A :class:`CpuMeter` sampling every ``every_s`` while the block runs, and at its ends
    (``writer_port``: see :data:`WRITERS`)."""
    meter = CpuMeter(run_dir, writer_port)
    meter.sample()

    async def sampling() -> None:
        while True:
            await asyncio.sleep(every_s)
            meter.sample()

    task = asyncio.create_task(sampling())
    try:
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        meter.sample()


def used_between(timeline: list[tuple[float, dict[str, float]]], start: float, end: float) -> dict[str, float]:
    """Component -> CPU seconds used between wall-clock times ``start`` and ``end`` (``time.time()``),
    each end interpolated linearly between the samples around it: the CPU of a job's steady
    state, without its start-up (a TaskManager compiling the new job's classes, Python workers
    importing their modules) or its end."""
    if not timeline or not timeline[0][0] <= start <= end <= timeline[-1][0]:
        raise ValueError(f"{start}..{end} is not within the samples ({len(timeline)} of them)")

    def at(moment: float) -> dict[str, float]:
        i = bisect_left([t for t, _ in timeline], moment)
        if timeline[i][0] == moment or i == 0:
            return timeline[i][1]
        (t0, before), (t1, after) = timeline[i - 1], timeline[i]
        share = (moment - t0) / (t1 - t0)
        return {name: before.get(name, 0.0) + share * (after[name] - before.get(name, 0.0)) for name in after}

    first, last = at(start), at(end)
    return {name: max(0.0, seconds - first.get(name, 0.0)) for name, seconds in last.items()}


def grouped(used: Mapping[str, float]) -> dict[str, float]:
    """``used`` summed into :data:`GROUPS` (components missing from the stack count 0)."""

    def names(entry: str) -> tuple[str, ...]:
        return (entry[:-1], entry[:-1] + CHILDREN) if entry.endswith("*") else (entry,)

    return {group: sum(used.get(name, 0.0) for entry in entries for name in names(entry)) for group, entries in GROUPS.items()}


def report(runs: Mapping[str, tuple[int, Mapping[str, float]]]) -> list[str]:
    """Lines of a table: per run (label -> events, CPU used), ms of CPU per event by group.

    The last column is the machine's whole CPU per event, which bounds events/s at
    ``cores * 1000 / total``; the two ``flink tm`` columns are the job's own.
    """
    width = max(map(len, runs), default=0)
    header = f"{'CPU ms/event':<{width}}" + "".join(f"{group:>16}" for group in GROUPS) + f"{'total':>9}"
    lines = [header]
    for label, (events, used) in runs.items():
        per = {group: seconds * 1000 / max(events, 1) for group, seconds in grouped(used).items()}
        lines.append(f"{label:<{width}}" + "".join(f"{value:16.3f}" for value in per.values()) + f"{sum(per.values()):9.3f}")
    return lines


def writer_share(runs: Mapping[str, tuple[int, Mapping[str, float]]]) -> list[str]:
    """Lines splitting "flink python" of each run into the Cassandra writer's workers
    (:data:`WRITERS`) and the rest (``decide``), in ms of CPU per event."""
    lines = []
    for label, (events, used) in runs.items():
        writers = used.get(WRITERS, 0.0) * 1000 / max(events, 1)
        rest = used.get(TM_WORKERS, 0.0) * 1000 / max(events, 1)
        if writers:
            lines.append(f"{label}: flink python = {rest:.3f} decide workers + {writers:.3f} Cassandra writer's workers")
    return lines
