"""Cassandra sink for the pipeline: scylla-driver from Python, through Flink async I/O.

No Cassandra connector exists for Flink 2.x, so the job writes with the driver itself:

* **prepared statements**, one per table, all plain ``INSERT`` = upsert on the primary key;
* **deterministic keys** (image_id, window start + group, ...) and **whole rows** (every column,
  ``null`` included), so a replay after recovery rewrites the same rows with the same values
  and CDC always carries complete rows;
* **async I/O** (``AsyncDataStream.unordered_wait``): the Python operator waits for its
  in-flight writes at the end of every bundle, and a checkpoint finishes the bundle first,
  so a checkpoint never completes with a write still pending (at-least-once, idempotent).

The mapping from rows to statements (:func:`image_writes`, :func:`window_writes`) is pure and
unit-tested; :class:`CassandraWriter` only executes.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from pyflink.datastream.functions import AsyncFunction, RuntimeContext

from imgstream.config import CassandraConfig
from imgstream.dedup import STATUS_DUPLICATE
from imgstream.events import parse_time
from imgstream.windows import STAT_FIELDS, Lateness, from_millis, window_start

INSERT_IMAGE = (
    "INSERT INTO images (image_id, producer, sha256, phash, size, content_type, width, height, storage_key, "
    "received_at, status, duplicate_of, duplicate_kind, distance, lateness, reject_reason, reject_error, "
    "source_topic, source_partition, source_offset, processed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_DUPLICATE = (
    "INSERT INTO duplicates (duplicate_of, image_id, duplicate_kind, distance, producer, sha256, received_at, "
    "processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_LATE_EVENT = (
    "INSERT INTO late_events (window_start, image_id, producer, content_type, status, duplicate_kind, size, "
    "received_at, watermark, behind_ms, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_UPLOAD_STATS = (
    "INSERT INTO upload_stats (window_start, window_end, producer, content_type, "
    + ", ".join(STAT_FIELDS)
    + ", duplicates, revision, late_events, final, updated_at) VALUES ("
    + ", ".join("?" * (4 + len(STAT_FIELDS) + 5))
    + ")"
)

STATEMENTS: Mapping[str, str] = {
    "image": INSERT_IMAGE,
    "duplicate": INSERT_DUPLICATE,
    "late_event": INSERT_LATE_EVENT,
    "upload_stats": INSERT_UPLOAD_STATS,
}

Write = tuple[str, tuple[Any, ...]]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _time(text: str | None, fallback_ms: int | None) -> datetime | None:
    if text:
        try:
            return parse_time(text)
        except ValueError:
            pass
    return None if fallback_ms is None else from_millis(fallback_ms)


def image_writes(row: Mapping[str, Any], window_ms: int, now: datetime | None = None) -> list[Write]:
    """The writes of one verdict row: its image row, a duplicates row, a late-events row.

    ``processed_at`` is the only non-deterministic column: it says when the row was last written.
    """
    now = now or _now()
    received_at = _time(row.get("received_at"), row.get("event_time"))
    writes: list[Write] = [
        (
            "image",
            (
                row["image_id"], row["producer"], row.get("sha256"), row.get("phash"), row.get("size"),
                row.get("content_type"), row.get("width"), row.get("height"), row.get("storage_key"),
                received_at, row["status"], row.get("duplicate_of"), row.get("duplicate_kind"),
                row.get("distance"), row.get("lateness"), row.get("reason"), row.get("error"),
                row.get("topic"), row.get("partition"), row.get("offset"), now,
            ),
        )
    ]  # fmt: skip
    if row["status"] == STATUS_DUPLICATE:
        writes.append(
            (
                "duplicate",
                (
                    row["duplicate_of"], row["image_id"], row.get("duplicate_kind"), row.get("distance"),
                    row["producer"], row.get("sha256"), received_at, now,
                ),
            )
        )  # fmt: skip
    if row.get("lateness") == Lateness.TOO_LATE.value:
        event_time = int(row["event_time"])
        watermark = int(row["watermark"])
        writes.append(
            (
                "late_event",
                (
                    from_millis(window_start(event_time, window_ms)), row["image_id"], row["producer"],
                    row.get("content_type"), row["status"], row.get("duplicate_kind"), row.get("size"),
                    received_at, from_millis(watermark), watermark - event_time, now,
                ),
            )
        )  # fmt: skip
    return writes


def window_writes(row: Mapping[str, Any], window_ms: int, now: datetime | None = None) -> list[Write]:
    """The upload_stats upsert of one window-row version (the whole row)."""
    now = now or _now()
    values = (
        from_millis(int(row["window_start"])),
        from_millis(int(row["window_end"])),
        row["producer"],
        row["content_type"],
        *(int(row[name]) for name in STAT_FIELDS),
        int(row["duplicates"]),
        int(row["revision"]),
        int(row["late_events"]),
        bool(row["final"]),
        now,
    )
    return [("upload_stats", values)]


class CassandraWriter(AsyncFunction):
    """Executes the writes ``to_writes(record)`` returns; emits nothing.

    One driver session per subtask, opened in ``open``. A failed write raises, failing the
    task: Flink restarts from the last checkpoint and the idempotent writes are replayed.
    """

    def __init__(
        self,
        config: CassandraConfig,
        to_writes: Callable[[Mapping[str, Any], int], list[Write]],
        window_ms: int,
        field_names: Sequence[str] | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.config = config
        self.request_timeout_s = request_timeout_s
        self.to_writes = to_writes
        self.window_ms = window_ms
        self.field_names = list(field_names) if field_names is not None else None
        self._cluster: Any = None
        self._session: Any = None
        self._prepared: dict[str, Any] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.cluster import Cluster

        # no frame compression: on a local network it costs more CPU than it saves
        self._cluster = Cluster(list(self.config.hosts), port=self.config.port, connect_timeout=20, compression=False)
        self._session = self._cluster.connect(self.config.keyspace)
        self._session.default_timeout = self.request_timeout_s
        for name, cql in STATEMENTS.items():
            statement = self._session.prepare(cql)
            statement.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            statement.is_idempotent = True  # upserts: the driver may retry them safely
            self._prepared[name] = statement

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    async def async_invoke(self, value: Any) -> list[Any]:
        writes = self.to_writes(self._record(value), self.window_ms)
        if writes:
            await self._execute_all(asyncio.get_running_loop(), writes)
        return []

    def _record(self, value: Any) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        if self.field_names is not None:
            return {name: value[i] for i, name in enumerate(self.field_names)}
        return dict(value.as_dict())

    def _execute_all(self, loop: asyncio.AbstractEventLoop, writes: list[Write]) -> "asyncio.Future[None]":
        """Start every write; one future for all of them (the first error fails it).

        The driver calls back on its own I/O thread; the future belongs to the loop's thread,
        so it is settled once, through ``call_soon_threadsafe``, when the last write ends.
        """
        future: asyncio.Future[None] = loop.create_future()
        lock = threading.Lock()
        state = {"left": len(writes), "error": None}

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

        def one_done(_: Any = None, error: BaseException | None = None) -> None:
            with lock:
                state["left"] -= 1
                if error is not None and state["error"] is None:
                    state["error"] = error
                    loop.call_soon_threadsafe(settle, error)
                elif state["left"] == 0 and state["error"] is None:
                    loop.call_soon_threadsafe(settle, None)

        for name, params in writes:
            response = self._session.execute_async(self._prepared[name], params)
            response.add_callbacks(one_done, lambda error: one_done(None, error))
        return future
