"""Remove what tests and benchmarks wrote to a shared stack: the rows of synthetic producers.

Tests, benchmarks and the generator write as producers named
:data:`~imgstream.domain.producers.SYNTHETIC_PREFIX` ``+ ...`` (docs/local-stack.md). Two layers
keep that apart from a user's data:

* **Never visible.** The ``analytics`` views (hence the stats API) leave synthetic producers
  out unless a session asks for them (``SET imgstream.include_synthetic = on``, test-only).
* **Never kept.** :func:`purge` deletes their rows from every table the pipeline writes
  (``flink_jobs/schema.cql``), in Cassandra, through the normal path: CDC carries each delete to
  PostgreSQL, like any other change. :func:`purge_postgres` removes the few rows tests write
  into PostgreSQL by hand (no ``cdc_ts``: no CDC change will ever delete them).

:func:`synthetic_session` brackets a test session or a benchmark: it purges leftovers of an
interrupted earlier run when it starts and everything at the end, but only when no other run
on the same stack is in progress (a shared ``flock`` on a file in the stack's state folder: a
run killed by SIGKILL releases it, and the next start cleans up after it).

Cassandra cannot select by a name prefix without an index, so :func:`purge` reads the key
columns and ``producer`` of each table (paged) and deletes matching rows by primary key; on a
test stack (tens of thousands of rows) that takes seconds. Every purged row leaves a tombstone
until compaction after ``gc_grace_seconds`` (10 days): should a scan ever fail on them
(``tombstone_failure_threshold``), the table's keys are taken from PostgreSQL's replica instead
(:func:`postgres_keys`; only rows CDC has already carried there, the rest go at the next purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping

from cassandra import ReadFailure, ReadTimeout
from cassandra.concurrent import execute_concurrent_with_args

from imgstream.adapters.cassandra import open_session
from imgstream.adapters.postgres import connect
from imgstream.config import StackConfig
from imgstream.domain.producers import SYNTHETIC_PREFIX, is_synthetic

#: The tables the pipeline writes (``flink_jobs/schema.cql``) and their primary-key columns,
#: all of which carry ``producer``.
TABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "images": ("image_id",),
    "duplicates": ("duplicate_of", "image_id"),
    "upload_stats": ("window_start", "producer", "content_type"),
    "late_events": ("window_start", "image_id"),
}
#: Deletes in flight at once: keeps one local node busy without overrunning its queue (the
#: same bound as the adapter's writes).
MAX_CONCURRENT_DELETES: Final = 64
#: Rows per page of the scan. Each page is one read command, and Cassandra fails a read that
#: passes ``tombstone_failure_threshold`` (100,000) tombstones: the pipeline's rows carry null
#: cells (tombstones) and purged rows leave row tombstones, so pages stay well below that.
SCAN_PAGE_ROWS: Final = 1000
#: The names tests and benchmarks used before the reserved prefix existed (each with a random run
#: id, so no user picks them by accident): ``imgstream synthetic purge --legacy`` removes them from
#: a stack that ran an older ``make test``/``make bench``. Plain ``alice``/``bob`` (old generator
#: defaults) and ``unknown`` are not matched: a user may own those names.
LEGACY_TEST_NAMES: Final = re.compile(
    r"^(?:(?:it|ft|sp|bench)[0-9a-f]{8}-(?:alice|bob|a|b|c)"
    r"|chaos-[0-9a-f]{6}-[a-z-]+|it-replay-[0-9a-f]{8}|it-cdc-order-[0-9a-f]{8}|cdc-e2e-[0-9a-f]{8}"
    r"|e2e-(?:stats|gw)-[0-9a-f]{8}|it-[0-9a-f]{10}-[ab]|bench-stats-[0-9])$")


def is_legacy_test_name(name: str | None) -> bool:
    """Whether ``name`` is one an older test or benchmark wrote (:data:`LEGACY_TEST_NAMES`)."""
    return name is not None and LEGACY_TEST_NAMES.fullmatch(name) is not None


#: How long a starting run waits for another run's final purge (seconds of deletes, rarely more).
LOCK_WAIT_S: Final = 600.0
#: How often a waiting run tries the lock again.
LOCK_POLL_S: Final = 0.5


@dataclass
class PurgeReport:
    """What :func:`purge` found and deleted, per table."""

    scanned: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    producers: set[str] = field(default_factory=set)
    #: Rows deleted from PostgreSQL directly (:func:`purge_postgres`).
    postgres: int = 0
    #: Tables whose scan failed and whose keys came from PostgreSQL, with the error.
    fallbacks: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def __str__(self) -> str:
        per_table = ", ".join(f"{t} {self.deleted.get(t, 0)}/{self.scanned.get(t, 0)}" for t in self.scanned)
        fallbacks = f"; keys from PostgreSQL for {sorted(self.fallbacks)}" if self.fallbacks else ""
        return (f"{self.total} Cassandra rows of {len(self.producers)} synthetic producers (deleted/scanned: "
                f"{per_table}); {self.postgres} hand-written PostgreSQL rows{fallbacks}")


Keyed = list[tuple[tuple[Any, ...], str]]  # (primary key values, producer) of matching rows


def purge(session: Any, match: Callable[[str | None], bool] = is_synthetic, *, dry_run: bool = False,
          tables: Mapping[str, tuple[str, ...]] = TABLES,
          fallback: Mapping[str, Keyed] | None = None) -> PurgeReport:
    """Delete, by primary key, every row of ``tables`` whose ``producer`` satisfies ``match``
    (default: the synthetic ones). ``session`` is a driver session on the pipeline's keyspace.
    With ``dry_run`` only counts. Idempotent: a second call finds nothing. When a table's scan
    fails (a read failure or timeout) and ``fallback`` has keys for it, those are deleted
    instead; without them the error propagates."""
    report = PurgeReport()
    for table, key in tables.items():
        try:
            found, scanned = _scan(session, table, key, match)
        except (ReadFailure, ReadTimeout) as exc:
            if fallback is None or table not in fallback:
                raise
            found, scanned = list(fallback[table]), 0
            report.fallbacks[table] = f"{type(exc).__name__}: {exc}"[:300]
        doomed = [keys for keys, _ in found]
        report.producers.update(producer for _, producer in found)
        report.scanned[table], report.deleted[table] = scanned, len(doomed)
        if doomed and not dry_run:
            delete = session.prepare(f"DELETE FROM {table} WHERE {' AND '.join(f'{c} = ?' for c in key)}")
            execute_concurrent_with_args(session, delete, doomed, concurrency=MAX_CONCURRENT_DELETES,
                                         raise_on_first_error=True)
    return report


def _scan(session: Any, table: str, key: tuple[str, ...], match: Callable[[str | None], bool]) -> tuple[Keyed, int]:
    """The keys and producers of ``table``'s matching rows, and how many rows were read."""
    columns = ", ".join(dict.fromkeys((*key, "producer")))
    select = session.prepare(f"SELECT {columns} FROM {table}")
    select.fetch_size = SCAN_PAGE_ROWS
    found: Keyed = []
    scanned = 0
    for row in session.execute(select):
        scanned += 1
        if match(row.producer):
            found.append((tuple(getattr(row, c) for c in key), row.producer))
    return found, scanned


async def postgres_keys(conn: Any, match: Callable[[str | None], bool],
                        tables: Mapping[str, tuple[str, ...]] = TABLES) -> dict[str, Keyed]:
    """The keys of matching rows that CDC replicated into PostgreSQL (``cdc_ts`` set), per table:
    :func:`purge`'s fallback. Reads key columns and producer only (a few MB for 100,000 rows)."""
    out: dict[str, Keyed] = {}
    for table, key in tables.items():
        columns = ", ".join(dict.fromkeys((*key, "producer")))
        rows = await conn.fetch(f"SELECT {columns} FROM public.{table} WHERE cdc_ts IS NOT NULL")
        out[table] = [(tuple(r[c] for c in key), r["producer"]) for r in rows if match(r["producer"])]
    return out


#: Rows tests write into PostgreSQL directly (``cdc_ts`` NULL: no CDC change will delete them).
_PG_HAND_WRITTEN: Final = "DELETE FROM public.{table} WHERE starts_with(producer, $1) AND cdc_ts IS NULL"


async def purge_postgres(conn: Any, tables: Mapping[str, tuple[str, ...]] = TABLES) -> int:
    """Delete the synthetic rows written into PostgreSQL's replicated tables by hand (not by
    CDC); returns how many. ``conn`` is an asyncpg connection of a role that may delete."""
    deleted = 0
    for table in tables:
        status = await conn.execute(_PG_HAND_WRITTEN.format(table=table), SYNTHETIC_PREFIX)
        deleted += int(status.split()[-1])
    return deleted


async def purge_stack(config: StackConfig, *, dry_run: bool = False, legacy: bool = False) -> PurgeReport:
    """:func:`purge` on the stack's Cassandra keyspace, then :func:`purge_postgres` (skipped in
    a dry run). CDC removes the deleted rows from PostgreSQL within seconds afterwards. With
    ``legacy``, also the names older tests used (:func:`is_legacy_test_name`)."""
    def match(name: str | None) -> bool:
        return is_synthetic(name) or (legacy and is_legacy_test_name(name))

    conn = await connect(str(config.postgres.dsn))
    try:
        fallback = await postgres_keys(conn, match)

        def in_cassandra() -> PurgeReport:
            cluster, session = open_session(config.cassandra)
            try:
                return purge(session, match, dry_run=dry_run, fallback=fallback)
            finally:
                cluster.shutdown()

        report = await asyncio.to_thread(in_cassandra)
        if not dry_run:
            report.postgres = await purge_postgres(conn)
    finally:
        await conn.close()
    return report


def lock_path(stack_dir: Path) -> Path:
    """The lock every run that writes synthetic data holds (shared) on the stack in ``stack_dir``."""
    return stack_dir / "run" / "synthetic.lock"


@contextlib.contextmanager
def synthetic_session(lock_file: Path, clean: Callable[[str], None], *,
                      wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Bracket a run that writes synthetic data: ``clean("start")`` before it and
    ``clean("end")`` after it, each only when no other such run holds ``lock_file``.

    Every run holds a shared ``flock`` while it runs; cleaning needs the exclusive one, tried
    without waiting. So the last run to finish cleans (a run in progress never sees its rows
    vanish), and a run that was killed is cleaned up after at the next start. A failing
    ``clean`` propagates: leftovers must not pass silently.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _try(fd, fcntl.LOCK_EX):
            clean("start")
        _wait_shared(fd, lock_file, wait_s)  # converts an exclusive lock, or waits out another's purge
        yield
        if _try(fd, fcntl.LOCK_EX):
            clean("end")
    finally:
        os.close(fd)  # releases the lock


def _try(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_shared(fd: int, lock_file: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not _try(fd, fcntl.LOCK_SH):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"another run held {lock_file} exclusively for over {wait_s:.0f}s (purging?)")
        time.sleep(LOCK_POLL_S)  # another run is purging: try again shortly
