"""A snapshot of what the platform holds, gathered with Spark: objects in the store, upload
events in the topic, image and derivative rows in Cassandra, PostgreSQL's replicated images.

Reconcile compares these; GC and reorganize decide from them. The snapshot is taken in this
order — rows and events first, the object listing last — so an object uploaded while the
snapshot is taken is at worst seen without its row (young, so inside the grace period), never a
row seen without its object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Final, Iterable

from batch import runtime
from batch.config import BatchConfig
from imgstream.domain.storage_layout import DERIVATIVE_PREFIX, QUARANTINE_PREFIX, sha256_of_key

IMAGE_COLUMNS: Final = ("image_id", "producer", "sha256", "storage_key", "status", "processed_at", "source_topic",
                        "source_partition", "source_offset")
DERIVATIVE_COLUMNS: Final = ("sha256", "ladder", "preset", "format", "storage_key", "size")


@dataclass(frozen=True, slots=True)
class Obj:
    """One stored object."""

    key: str
    size: int
    last_modified: datetime | None


@dataclass
class Inventory:
    objects: dict[str, Obj] = field(default_factory=dict)
    events: list[runtime.Upload] = field(default_factory=list)
    #: partition -> first retained offset of the upload topic (events before it are gone).
    earliest: dict[int, int] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    derivatives: list[dict[str, Any]] = field(default_factory=list)
    relocations: list[dict[str, Any]] = field(default_factory=list)
    pg_rows: dict[str, dict[str, Any]] | None = None

    def scoped(self, keep: Callable[[str], bool]) -> "Inventory":
        """The images of the producers ``keep`` accepts: their events, rows (Cassandra and
        PostgreSQL) and the derivatives of their contents. Objects stay whole (a scoped image's
        object is looked up among all), so orphan objects, which name no producer, cannot be
        judged on a scoped inventory."""
        rows = {i: r for i, r in self.rows.items() if keep(r.get("producer") or "")}
        contents = {r.get("sha256") for r in rows.values()}
        return replace(
            self, events=[e for e in self.events if keep(e.producer)], rows=rows,
            derivatives=[d for d in self.derivatives if d.get("sha256") in contents],
            pg_rows=None if self.pg_rows is None else {
                i: r for i, r in self.pg_rows.items() if keep(r.get("producer") or "")})

    def originals(self) -> dict[str, Obj]:
        return {k: o for k, o in self.objects.items() if sha256_of_key(k) is not None}

    def derived(self) -> dict[str, Obj]:
        return {k: o for k, o in self.objects.items() if k.startswith(DERIVATIVE_PREFIX)}

    def quarantined(self) -> dict[str, Obj]:
        return {k: o for k, o in self.objects.items() if k.startswith(QUARANTINE_PREFIX)}


def _objects(config: BatchConfig) -> dict[str, Obj]:
    store = runtime.s3(config.stack.s3)
    return {o.key: Obj(o.key, o.size, o.last_modified) for o in store.list("")}


async def _pg_images(dsn: str) -> dict[str, dict[str, Any]]:
    from imgstream.adapters.postgres import connect

    conn = await connect(dsn)
    try:
        # every producer's rows, as Cassandra holds them: the view hides synthetic ones by default
        await conn.execute("SET imgstream.include_synthetic = on")
        rows = await conn.fetch("SELECT image_id, producer, status, storage_key, sha256 FROM analytics.images")
    finally:
        await conn.close()
    return {r["image_id"]: dict(r) for r in rows}


def gather(spark: Any, config: BatchConfig, *, events: bool = True, postgres: bool = False,
           derivatives: bool = True, relocations: bool = True) -> Inventory:
    """Take the snapshot (driver; the scans and the topic read run on executors)."""
    stack = config.stack
    inv = Inventory()
    rows_rdd = runtime.scan_rdd(spark, stack.cassandra, "images", "image_id", IMAGE_COLUMNS)
    inv.rows = {r["image_id"]: r for r in rows_rdd.collect()}
    if derivatives:
        inv.derivatives = runtime.scan_rdd(spark, stack.cassandra, "derivatives", "sha256", DERIVATIVE_COLUMNS).collect()
    if relocations:
        inv.relocations = runtime.scan_rdd(spark, stack.cassandra, "relocations", "sha256",
                                           ("sha256", "old_key", "new_key", "layout", "state", "switched_at")).collect()
    if events:
        ends = runtime.topic_ends(stack.kafka, config.topic)
        records = runtime.read_topic(spark, stack.kafka, config.topic, {}, ends).cache()
        topic = config.topic
        inv.earliest = {r["partition"]: r["min(offset)"] for r in records.groupBy("partition").min("offset").collect()}
        for p, end in ends.items():
            inv.earliest.setdefault(p, end)  # an empty partition: everything before its end is gone
        inv.events = records.rdd.mapPartitions(lambda rows: runtime.parse_uploads(rows, topic)).collect()
        records.unpersist()
    if postgres:
        inv.pg_rows = asyncio.run(_pg_images(str(stack.postgres.dsn)))
    inv.objects = _objects(config)  # last: see the module docstring
    return inv


def live_keys(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Storage keys referenced by image rows that are not deleted."""
    return {r["storage_key"] for r in rows if r.get("storage_key") and r.get("status") != "deleted"}
