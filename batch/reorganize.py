"""The reorganize job: move originals to another key layout (``imgstream.domain.storage_layout``).

Per content hash, a small state machine kept in Cassandra ``relocations`` (so a run resumes
where a killed one stopped)::

    (none) --copy--> copied --SHA-256 of the copy verified--> verified
           --every image row rewritten with the new key--> switched (switched_at)
           --a later run, grace passed, no live row on the old key--> retired (old key deleted)

Invariants, whatever step a crash interrupts: the old object exists until ``retired``; every row
points at the old or the new key, and the new key exists from ``verified`` on, before any row
points at it; while a relocation is not retired, GC counts both keys as referenced. Rows are
rewritten whole (every column) so the CDC change carries the full row to PostgreSQL.
Derivative keys are content-addressed by ladder, not by layout, so they do not move.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Iterable, Iterator

from batch import runtime
from batch.config import BatchConfig
from batch.inventory import gather
from imgstream.config import CassandraConfig, S3Config
from imgstream.domain.storage_layout import LAYOUTS, Layout, sha256_of_key

JOB: Final = "reorganize"
#: Rows in these statuses are moved (a rejected image's row points at bytes GC keeps; they move too).
MOVABLE: Final = frozenset({"accepted", "duplicate", "rejected"})


#: Relocation states a killed run can leave behind that no later run would reach from the rows alone.
UNFINISHED: Final = frozenset({"copied", "verified"})


def plan(rows: Iterable[dict[str, Any]], layout: Layout,
         relocations: Iterable[dict[str, Any]] = ()) -> dict[str, tuple[str, tuple[str, ...]]]:
    """sha256 -> (current key, image ids) of contents to move to ``layout`` (pure).

    A content is planned when a row of it is not yet in ``layout``, or when its relocation to
    ``layout`` is unfinished (``copied``/``verified``): a run killed after rewriting the rows but
    before recording ``switched`` leaves rows that already point at the new key, and without this
    the old object would never be retired. Re-running the move of such a content only re-verifies
    the copy and records ``switched``.
    """
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for row in rows:
        key, sha = row.get("storage_key"), row.get("sha256")
        if not key or not sha or row.get("status") not in MOVABLE or sha256_of_key(key) != sha:
            continue
        if key == layout.key(sha):
            continue
        old, ids = out.get(sha, (key, ()))
        out[sha] = (old, tuple(sorted(set(ids) | {row["image_id"]})))
    for r in relocations:
        if r.get("layout") == layout.name and r.get("state") in UNFINISHED and r.get("sha256") not in out:
            out[r["sha256"]] = (r["old_key"], ())
    return out


def _set_state(session: Any, sha: str, old: str, new: str, layout: str, state: str,
               switched_at: datetime | None = None) -> None:
    statement = runtime.prepared(session, "INSERT INTO relocations (sha256, old_key, new_key, layout, state, "
                                          "updated_at, switched_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
    session.execute(statement, (sha, old, new, layout, state, datetime.now(timezone.utc), switched_at))


def move(s3cfg: S3Config, cass: CassandraConfig, layout: Layout,
         items: Iterable[tuple[str, tuple[str, tuple[str, ...]]]]) -> Iterator[tuple[str, str, str]]:
    """Executor: copy, verify, switch each content; yields (sha256, outcome, detail)."""
    store = runtime.s3(s3cfg)
    session = runtime.cassandra(cass)
    select = runtime.prepared(session, "SELECT storage_key FROM images WHERE image_id = ?")
    # The reference only, a partial update: a whole-row rewrite from a read a moment earlier could
    # undo a concurrent deletion (status) or pipeline write. CDC carries the one column, and
    # PostgreSQL's upsert keeps the others (docs/cdc.md: partial updates stay partial).
    switch = runtime.prepared(session, "UPDATE images SET storage_key = ? WHERE image_id = ?")
    for sha, (old, image_ids) in items:
        new = layout.key(sha)
        try:
            if store.head(new) is None and not store.copy(old, new):
                yield sha, "failed", f"source {old} missing"
                continue
            _set_state(session, sha, old, new, layout.name, "copied")
            data = store.get(new)
            if data is None or hashlib.sha256(data).hexdigest() != sha:
                store.delete(new)  # a bad copy must never be switched to
                yield sha, "failed", "copy failed SHA-256 verification"
                continue
            _set_state(session, sha, old, new, layout.name, "verified")
            for image_id in image_ids:
                row = session.execute(select, (image_id,)).one()
                if row is None or row.storage_key == new:
                    continue
                session.execute(switch, (new, image_id))
            _set_state(session, sha, old, new, layout.name, "switched", datetime.now(timezone.utc))
            yield sha, "switched", new
        except Exception as exc:  # noqa: BLE001 - one content's failure is reported; the rest go on
            yield sha, "failed", f"{type(exc).__name__}: {exc}"


def build(spark: Any, config: BatchConfig, *, layout: str, grace: timedelta, limit: int = 0,
          progress: runtime.Progress | None = None) -> dict[str, Any]:
    """Run the job: retire what is due, then move what is not yet in ``layout``."""
    target = LAYOUTS[layout]
    run = runtime.run_id(JOB)
    now = datetime.now(timezone.utc)
    if progress is not None:
        progress.phase = "taking the inventory"
    inv = gather(spark, config, events=False, derivatives=False)
    session = runtime.cassandra(config.stack.cassandra)
    store = runtime.s3(config.stack.s3)
    on_key: dict[str, int] = {}
    for row in inv.rows.values():
        if row.get("storage_key") and row.get("status") != "deleted":
            on_key[row["storage_key"]] = on_key.get(row["storage_key"], 0) + 1
    retired = waiting = 0
    log = runtime.prepared(session, "INSERT INTO gc_log (run_id, storage_key, action, reason, size, sha256, mode, at) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    for r in inv.relocations:
        if r.get("state") != "switched":
            continue
        switched = r.get("switched_at")
        switched = switched.replace(tzinfo=timezone.utc) if switched and switched.tzinfo is None else switched
        if switched is None or switched > now - grace or on_key.get(r["old_key"]):
            waiting += 1
            continue
        if r["new_key"] not in inv.objects:  # never retire the only copy
            waiting += 1
            continue
        obj = inv.objects.get(r["old_key"])
        session.execute(log, (run, r["old_key"], "retire", f"moved to {r['new_key']}", obj.size if obj else 0,
                              r["sha256"], "apply", datetime.now(timezone.utc)))
        store.delete(r["old_key"])
        _set_state(session, r["sha256"], r["old_key"], r["new_key"], r["layout"], "retired", switched)
        retired += 1
    todo = sorted(plan(inv.rows.values(), target, inv.relocations).items())
    if limit:
        todo = todo[:limit]
    if progress is not None:
        progress.phase = f"moving {len(todo)} contents"
    s3cfg, cass = config.stack.s3, config.stack.cassandra
    results = (spark.sparkContext.parallelize(todo, max(1, min(len(todo), spark.sparkContext.defaultParallelism * 2)))
               .mapPartitions(lambda part: move(s3cfg, cass, target, part)).collect()) if todo else []
    failures = [{"sha256": sha, "reason": detail} for sha, what, detail in results if what == "failed"]
    return {"job": JOB, "run_id": run, "layout": target.name, "processed": len(todo),
            "created": sum(1 for _, what, _ in results if what == "switched"), "skipped": len(inv.rows) - len(todo),
            "failed": len(failures), "retired": retired, "waiting_retirement": waiting,
            "grace_s": grace.total_seconds(), "failures": failures[:20]}
