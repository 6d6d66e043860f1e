"""Where the pipeline resumes after a crash: its newest completed checkpoint or savepoint.

A JobManager crash (or any stop that is not ``make down``) loses the running job: the session
cluster keeps no job across its own restart. What survives is on disk: the checkpoints Flink
retains (``RETAIN_ON_CANCELLATION``, the newest few per job under
``<checkpoints>/<job id>/chk-<n>/``) and the savepoints (``<savepoints>/savepoint-<job id[:6]>-*``).
Submitting the pipeline again *without* one of them starts it with an empty dedup index and no
open windows while the Kafka source goes on from the consumer group's offsets: duplicates of
earlier images are decided as new and window counts are lost, silently (issue 16, item 1).

So every submission is recorded in a :class:`JobRegistry` (job id and name, in the state
folder beside the checkpoints), and :func:`latest_restore_point` picks, among the checkpoints
and savepoints of the jobs that carried this name since the last reset, the newest *completed*
one: a checkpoint or savepoint is complete once its ``_metadata`` file exists (Flink writes it
last). Starting empty is an operator's decision (``make flink-reset``), never a fallback.

Submitters are serialised by :func:`imgstream.filelock.exclusive` (two ``make up`` at once must
not submit two pipelines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

#: Completion marker of a checkpoint or savepoint directory (written last by Flink).
METADATA = "_metadata"
#: Where ``make down`` leaves the savepoint it stopped the pipeline with (in the run folder).
SAVEPOINT_NOTE = "pipeline.savepoint"
#: The registry of submitted jobs (in the Flink state folder, beside the checkpoints: ``make
#: clean`` wipes both together).
REGISTRY_FILE = "jobs.tsv"
#: A registry line that forgets every job before it (``make flink-reset``).
RESET = "reset"


@dataclass(frozen=True, order=True)
class RestorePoint:
    """A completed checkpoint or savepoint; orders by completion time."""

    completed_at: float  # mtime of its _metadata
    path: Path
    kind: str  # "checkpoint" | "savepoint"

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.completed_at))
        return f"{self.kind} {self.path} (completed {when} UTC)"


def completed(path: Path, kind: str) -> RestorePoint | None:
    """``path`` as a restore point if it is a completed checkpoint/savepoint directory."""
    metadata = path / METADATA
    try:
        stat = metadata.stat()
    except OSError:
        return None
    return RestorePoint(stat.st_mtime, path, kind) if stat.st_size > 0 else None


def checkpoints_of(root: Path, job_ids: Iterable[str]) -> list[RestorePoint]:
    """The completed retained checkpoints of ``job_ids`` under ``root``."""
    out = []
    for job_id in job_ids:
        for chk in (root / job_id).glob("chk-*"):
            point = completed(chk, "checkpoint")
            if point is not None:
                out.append(point)
    return out


def savepoints_of(root: Path, job_ids: Iterable[str]) -> list[RestorePoint]:
    """The completed savepoints taken of ``job_ids`` under ``root`` (Flink names them
    ``savepoint-<first 6 characters of the job id>-<random>``)."""
    prefixes = {job_id[:6] for job_id in job_ids}
    out = []
    for path in root.glob("savepoint-*"):
        parts = path.name.split("-")
        if len(parts) >= 3 and parts[1] in prefixes:
            point = completed(path, "savepoint")
            if point is not None:
                out.append(point)
    return out


class JobRegistry:
    """``job_id <TAB> name <TAB> submitted_at`` lines, appended on every submission; a
    ``reset`` line forgets the jobs before it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def record(self, job_id: str, name: str) -> None:
        if job_id in self.job_ids(name):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(f"{job_id}\t{name}\t{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")

    def reset(self) -> None:
        """Forget every job recorded so far (their state is not to be resumed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(f"{RESET}\t\t{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")

    def job_ids(self, name: str) -> list[str]:
        """Ids of the jobs named ``name`` since the last reset, oldest first."""
        if not self.path.exists():
            return []
        ids: list[str] = []
        for line in self.path.read_text().splitlines():
            fields = line.split("\t")
            if fields[0] == RESET:
                ids = []
            elif len(fields) >= 2 and fields[1] == name:
                ids.append(fields[0])
        return ids


@dataclass(frozen=True)
class StackState:
    """The folders of the local stack the submitter reads and writes."""

    root: Path  # .stack

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def flink(self) -> Path:
        return self.root / "data" / "flink"

    @property
    def checkpoints(self) -> Path:
        return self.flink / "checkpoints"

    @property
    def savepoints(self) -> Path:
        return self.flink / "savepoints"

    @property
    def registry(self) -> JobRegistry:
        return JobRegistry(self.flink / REGISTRY_FILE)

    @property
    def note(self) -> Path:
        return self.run / SAVEPOINT_NOTE


def restore_points(state: StackState, name: str, extra: Sequence[Path] = ()) -> list[RestorePoint]:
    """The completed checkpoints and savepoints of the jobs named ``name`` (since the last
    reset) and ``extra`` (e.g. the savepoint ``make down`` noted), newest first."""
    job_ids = state.registry.job_ids(name)
    candidates = checkpoints_of(state.checkpoints, job_ids) + savepoints_of(state.savepoints, job_ids)
    candidates += [p for p in (completed(path, "savepoint") for path in extra) if p is not None]
    return sorted(set(candidates), reverse=True)


def latest_restore_point(state: StackState, name: str, extra: Sequence[Path] = ()) -> RestorePoint | None:
    """The newest of :func:`restore_points`, ``None`` when there is none."""
    points = restore_points(state, name, extra)
    return points[0] if points else None


def noted_savepoint(state: StackState) -> Path | None:
    """The savepoint ``make down`` noted, if any (``file://`` URIs and plain paths alike)."""
    if not state.note.exists():
        return None
    text = state.note.read_text().strip()
    for scheme in ("file://", "file:"):
        text = text.removeprefix(scheme)
    return Path(text) if text else None
