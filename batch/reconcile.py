"""The reconcile job: S3 objects vs ``images.uploaded`` events vs Cassandra ``images`` vs
PostgreSQL ``analytics.images`` (and derivative rows vs their objects).

:func:`compare` is the pure oracle: counts per source and one list per kind of disagreement.
Things younger than the grace period are in flight (an upload not yet processed, a row not yet
replicated, an object whose event is about to be published) and are not disagreements yet.
Exit status 0 only when every list is empty.

Kinds:

* ``missing_object`` — an event (image not yet in Cassandra) whose object is not stored;
* ``event_without_row`` — an event older than grace with no Cassandra row;
* ``row_without_event`` — a live row from the upload topic whose event is still retained but absent;
* ``row_without_object`` — a live row (accepted/duplicate) whose storage key has no object;
* ``orphan_object`` — an original no event or row references, older than grace;
* ``pg_missing`` / ``pg_mismatch`` / ``pg_extra`` — Cassandra vs PostgreSQL rows (status, storage key);
* ``derivative_without_object`` — a derivatives row whose object is not stored.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Final

from batch import runtime
from batch.config import BatchConfig
from batch.inventory import Inventory, gather
from imgstream.domain.events import parse_time

JOB: Final = "reconcile"
#: Statuses whose row must have its object.
LIVE: Final = frozenset({"accepted", "duplicate"})
KINDS: Final = ("missing_object", "event_without_row", "row_without_event", "row_without_object", "orphan_object",
                "pg_missing", "pg_mismatch", "pg_extra", "derivative_without_object")
#: Disagreements listed per kind in the summary (the counts are always complete).
LISTED: Final = 50


def _older(ts: datetime | None, cutoff: datetime) -> bool:
    if ts is None:
        return True
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)  # the Cassandra driver returns naive UTC
    return ts < cutoff


def compare(inv: Inventory, *, now: datetime, grace: timedelta, topic: str,
            orphans: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Every disagreement between the sources of ``inv`` (pure); ``orphans=False`` leaves
    orphan objects unjudged (a producer-scoped inventory cannot tell whose they are)."""
    cutoff = now - grace
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    objects = inv.objects
    event_ids = {e.image_id for e in inv.events}
    referenced: set[str] = set()
    for e in inv.events:
        if e.image_id in inv.rows:
            continue  # the row says where the bytes are now (reorganize may have moved them)
        referenced.add(e.storage_key)
        if e.storage_key not in objects:
            out["missing_object"].append({"image_id": e.image_id, "storage_key": e.storage_key})
        if _older(parse_time(e.received_at), cutoff):
            out["event_without_row"].append({"image_id": e.image_id, "partition": e.partition, "offset": e.offset})
    for image_id, row in inv.rows.items():
        key, status = row.get("storage_key"), row.get("status")
        if key:
            referenced.add(key)
        if status in LIVE and key and key not in objects:
            out["row_without_object"].append({"image_id": image_id, "storage_key": key, "status": status})
        p, o = row.get("source_partition"), row.get("source_offset")
        if (status in LIVE and row.get("source_topic") == topic and p is not None and o is not None
                and o >= inv.earliest.get(p, 1 << 62) and image_id not in event_ids):
            out["row_without_event"].append({"image_id": image_id, "partition": p, "offset": o})
    for r in inv.relocations:
        if r.get("state") != "retired":
            referenced.update(k for k in (r.get("old_key"), r.get("new_key")) if k)
    for key, obj in (inv.originals() if orphans else {}).items():
        if key not in referenced and _older(obj.last_modified, cutoff):
            out["orphan_object"].append({"storage_key": key, "size": obj.size,
                                         "last_modified": obj.last_modified.isoformat() if obj.last_modified else None})
    if inv.pg_rows is not None:
        for image_id, row in inv.rows.items():
            if not _older(row.get("processed_at"), cutoff):
                continue
            pg = inv.pg_rows.get(image_id)
            if pg is None:
                out["pg_missing"].append({"image_id": image_id})
            elif (pg.get("status"), pg.get("storage_key")) != (row.get("status"), row.get("storage_key")):
                out["pg_mismatch"].append({"image_id": image_id,
                                           "cassandra": [row.get("status"), row.get("storage_key")],
                                           "postgres": [pg.get("status"), pg.get("storage_key")]})
        out["pg_extra"] = [{"image_id": i} for i in sorted(set(inv.pg_rows) - set(inv.rows))]
    for d in inv.derivatives:
        if d.get("storage_key") and d["storage_key"] not in objects:
            out["derivative_without_object"].append({"sha256": d["sha256"], "storage_key": d["storage_key"]})
    return out


def summarise(inv: Inventory, found: dict[str, list[dict[str, Any]]], *, run: str, grace: timedelta) -> dict[str, Any]:
    disagreements = sum(len(v) for v in found.values())
    return {
        "job": JOB, "run_id": run,
        "processed": len(inv.objects) + len(inv.events) + len(inv.rows) + len(inv.pg_rows or {}),
        "created": 0, "skipped": 0, "failed": disagreements, "agree": disagreements == 0,
        "grace_s": grace.total_seconds(),
        "counts": {"objects": len(inv.objects), "originals": len(inv.originals()), "events": len(inv.events),
                   "rows": len(inv.rows), "postgres_rows": len(inv.pg_rows or {}),
                   "derivative_rows": len(inv.derivatives), "derivative_objects": len(inv.derived())},
        "disagreements": {k: len(v) for k, v in found.items()},
        "lists": {k: v[:LISTED] for k, v in found.items() if v},
    }


def build(spark: Any, config: BatchConfig, *, grace: timedelta, postgres: bool = True,
          producer_prefix: str | None = None, progress: runtime.Progress | None = None) -> dict[str, Any]:
    """Run the job; the summary's ``agree`` is true only when nothing disagrees.

    ``producer_prefix`` judges only the images of producers whose name starts with it (a test's
    own producers on a stack shared with other runs); orphan objects are then not judged."""
    run = runtime.run_id(JOB)
    if progress is not None:
        progress.phase = "taking the inventory"
    inv = gather(spark, config, postgres=postgres)
    if producer_prefix:
        inv = inv.scoped(lambda producer: producer.startswith(producer_prefix))
    if progress is not None:
        progress.phase = "comparing"
    found = compare(inv, now=datetime.now(timezone.utc), grace=grace, topic=config.topic,
                    orphans=not producer_prefix)
    return {**summarise(inv, found, run=run, grace=grace), "producer_prefix": producer_prefix}
