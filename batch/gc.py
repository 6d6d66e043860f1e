"""The gc job: garbage collection of the object store that cannot lose referenced data.

State machine of one object (docs/batch.md has the figure)::

    live --(unreferenced, older than grace)--> candidate   (dry run: manifest + gc_log, nothing moves)
    candidate --(--apply)--> quarantined                    (copy to quarantine/<key>, then delete <key>)
    quarantined --(referenced again)--> live                (restore: copy back, drop the copy)
    quarantined --(a later --apply run, still unreferenced,
                   quarantined longer than grace)--> deleted (DeleteObjects, <= 1,000 keys per call)

*Referenced* means: the storage key of an image row whose status is not ``deleted`` (rejected
images keep their bytes), the key of an upload event whose image has no row yet (pending), either
key of a relocation still in progress (reorganize), and for derivatives a row of the current
ladder whose content still has a live image. So content shared by several images — of different
producers too — goes only when the last of them is deleted; ``deleted`` rows plug in as they
appear (Flink writes them; this job only reads statuses).

Candidates and their reasons: ``orphan`` (an original nothing references: a gateway crash between
the put and the publish), ``deleted_image`` (every image of that content is deleted),
``retired_ladder`` (a derivative of another ladder version), ``deleted_content`` (a derivative
whose content has no live image), ``orphan_derivative`` (a derivative object without its row).

Crash safety: the only destructive steps are (a) deleting a key after its quarantine copy is
verified, and (b) deleting a quarantined copy whose original key is unreferenced in a snapshot
taken after the quarantine. A run killed anywhere leaves each object in one of: live, live +
quarantine copy, quarantined; the next run continues from there. Every action is a ``gc_log`` row
(replicated to PostgreSQL ``analytics.gc_log``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Iterable, Iterator

from batch import runtime
from batch.config import BatchConfig
from batch.inventory import Inventory, Obj, gather
from imgstream.adapters.s3_sync import MAX_DELETE_BATCH
from imgstream.config import CassandraConfig, S3Config
from imgstream.domain.storage_layout import DERIVATIVE_PREFIX, quarantine_key, sha256_of_key, unquarantine_key

JOB: Final = "gc"
#: Image statuses whose content still needs its derivatives.
LIVE_CONTENT: Final = frozenset({"accepted", "duplicate"})


@dataclass(frozen=True, slots=True)
class Action:
    """One thing GC does (or would do) to one key."""

    action: str  # candidate | quarantine | restore | delete | keep
    key: str
    reason: str
    size: int = 0
    sha256: str = ""


def _derivative_parts(key: str) -> tuple[str, str, str, str] | None:
    """(ladder, preset, sha256, format extension) of a derivative key, else None."""
    if not key.startswith(DERIVATIVE_PREFIX):
        return None
    parts = key[len(DERIVATIVE_PREFIX):].split("/")
    if len(parts) != 4 or "." not in parts[3]:
        return None
    sha, ext = parts[3].rsplit(".", 1)
    return parts[0], parts[1], sha, ext


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def _old(obj: Obj, cutoff: datetime) -> bool:
    ts = _aware(obj.last_modified)
    return ts is not None and ts < cutoff


def references(inv: Inventory, ladder: str) -> tuple[set[str], set[str]]:
    """(referenced keys, live content hashes) of a snapshot (pure)."""
    keys: set[str] = set()
    live: set[str] = set()
    for row in inv.rows.values():
        if row.get("status") == "deleted":
            continue
        if row.get("storage_key"):
            keys.add(row["storage_key"])
        if row.get("status") in LIVE_CONTENT and row.get("sha256"):
            live.add(row["sha256"])
    for e in inv.events:
        if e.image_id not in inv.rows:  # pending: the pipeline has not written its row yet
            keys.add(e.storage_key)
            live.add(e.sha256)
    for r in inv.relocations:
        if r.get("state") != "retired":
            keys.update(k for k in (r.get("old_key"), r.get("new_key")) if k)
    for d in inv.derivatives:
        if d.get("ladder") == ladder and d.get("sha256") in live and d.get("storage_key"):
            keys.add(d["storage_key"])
    return keys, live


def plan(inv: Inventory, *, ladder: str, now: datetime, grace: timedelta) -> list[Action]:
    """Candidates, restores and quarantine deletions for a snapshot (pure; nothing is done)."""
    cutoff = now - grace
    keys, live = references(inv, ladder)
    deleted_content = {r["sha256"] for r in inv.rows.values() if r.get("status") == "deleted" and r.get("sha256")}
    actions: list[Action] = []
    for key, obj in sorted(inv.originals().items()):
        if key in keys or not _old(obj, cutoff):
            continue
        sha = sha256_of_key(key) or ""
        actions.append(Action("candidate", key, "deleted_image" if sha in deleted_content else "orphan", obj.size, sha))
    for key, obj in sorted(inv.derived().items()):
        if key in keys or not _old(obj, cutoff):
            continue
        parts = _derivative_parts(key)
        sha = parts[2] if parts else ""
        if parts is None or parts[0] != ladder:
            reason = "retired_ladder"
        elif sha not in live:
            reason = "deleted_content"
        else:
            reason = "orphan_derivative"
        actions.append(Action("candidate", key, reason, obj.size, sha))
    for qkey, obj in sorted(inv.quarantined().items()):
        key = unquarantine_key(qkey)
        sha = sha256_of_key(key) or ((_derivative_parts(key) or ("", "", "", ""))[2])
        if key in keys:
            actions.append(Action("restore", key, "referenced again", obj.size, sha))
        elif key in inv.objects:
            # A run was killed between its copy and the delete of the source: the source is
            # still there (and a candidate again if still unreferenced), so keep this copy.
            actions.append(Action("keep", key, "source still present", obj.size, sha))
        elif _old(obj, cutoff):
            actions.append(Action("delete", key, "unreferenced after quarantine", obj.size, sha))
        else:
            actions.append(Action("keep", key, "in quarantine for less than the grace period", obj.size, sha))
    return actions


# --- executor side --------------------------------------------------------------------------------


class _Log:
    def __init__(self, cfg: CassandraConfig, run: str, mode: str) -> None:
        self.session = runtime.cassandra(cfg)
        self.insert = runtime.prepared(self.session, "INSERT INTO gc_log (run_id, storage_key, action, reason, size, "
                                                     "sha256, mode, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        self.run = run
        self.mode = mode

    def __call__(self, a: Action, action: str | None = None, reason: str | None = None) -> None:
        self.session.execute(self.insert, (self.run, a.key, action or a.action, reason or a.reason, a.size, a.sha256,
                                           self.mode, datetime.now(timezone.utc)))


def execute(s3cfg: S3Config, cass: CassandraConfig, run: str, snapshot_at: datetime,
            actions: Iterable[Action]) -> Iterator[tuple[str, str, str]]:
    """Executor: carry out ``actions``; yields (key, what was done, detail)."""
    store = runtime.s3(s3cfg)
    log = _Log(cass, run, "apply")
    session = log.session
    drop_row = runtime.prepared(session, "DELETE FROM derivatives WHERE sha256 = ? AND ladder = ? AND preset = ? "
                                         "AND format = ?")
    to_delete: list[tuple[str, Action]] = []
    for a in actions:
        q = quarantine_key(a.key)
        try:
            if a.action == "candidate":
                if not store.copy(a.key, q):
                    yield a.key, "gone", "already absent"
                    continue
                copied = store.head(q)
                if copied is None or copied.size != a.size:
                    yield a.key, "failed", "quarantine copy not verified"
                    continue
                current = store.head(a.key)
                modified = _aware(current.last_modified) if current else None
                if current is not None and modified is not None and modified > snapshot_at:
                    store.delete(q)  # re-written since the snapshot (a new upload of that content)
                    log(a, "keep", "rewritten since the snapshot")
                    yield a.key, "keep", "rewritten since the snapshot"
                    continue
                parts = _derivative_parts(a.key)
                if parts is not None:
                    from imgstream.domain.storage_layout import FORMAT_EXTENSIONS

                    fmt = next((f for f, ext in FORMAT_EXTENSIONS.items() if ext == parts[3]), parts[3])
                    session.execute(drop_row, (parts[2], parts[0], parts[1], fmt))
                log(a, "quarantine")
                store.delete(a.key)
                yield a.key, "quarantined", a.reason
            elif a.action == "restore":
                if store.head(a.key) is None and not store.copy(q, a.key):
                    yield a.key, "failed", "restore copy failed"
                    continue
                log(a)
                store.delete(q)
                yield a.key, "restored", a.reason
            elif a.action == "delete":
                to_delete.append((q, a))
        except Exception as exc:  # noqa: BLE001 - one key's failure is reported, the run goes on
            yield a.key, "failed", f"{type(exc).__name__}: {exc}"
    for start in range(0, len(to_delete), MAX_DELETE_BATCH):
        batch = to_delete[start:start + MAX_DELETE_BATCH]
        for _, a in batch:
            log(a)
        try:
            refused = store.delete_many([q for q, _ in batch])
        except Exception as exc:  # noqa: BLE001
            refused = {q: f"{type(exc).__name__}: {exc}" for q, _ in batch}
        for q, a in batch:
            yield (a.key, "failed", refused[q]) if q in refused else (a.key, "deleted", a.reason)


def _write_manifest(config: BatchConfig, run: str, actions: list[Action]) -> str:
    key = f"{config.reports_prefix}gc/{run}.jsonl"
    body = "".join(json.dumps(asdict(a), sort_keys=True) + "\n" for a in actions).encode()
    runtime.s3(config.stack.s3).put(key, body, content_type="application/x-ndjson")
    return key


def build(spark: Any, config: BatchConfig, *, apply: bool, grace: timedelta,
          progress: runtime.Progress | None = None) -> dict[str, Any]:
    """Run the job (dry run unless ``apply``); returns its summary."""
    run = runtime.run_id(JOB)
    if progress is not None:
        progress.phase = "taking the inventory"
    snapshot_at = datetime.now(timezone.utc)
    inv = gather(spark, config)
    actions = plan(inv, ladder=config.ladder.version, now=snapshot_at, grace=grace)
    candidates = [a for a in actions if a.action == "candidate"]
    manifest = _write_manifest(config, run, actions)
    summary: dict[str, Any] = {
        "job": JOB, "run_id": run, "mode": "apply" if apply else "dry-run",
        "processed": len(inv.objects), "created": 0,
        "skipped": len(inv.objects) - len(candidates) - len(inv.quarantined()),
        "failed": 0, "candidates": len(candidates),
        "candidate_bytes": sum(a.size for a in candidates),
        "reasons": {r: sum(1 for a in candidates if a.reason == r) for r in sorted({a.reason for a in candidates})},
        "quarantined": 0, "restored": 0, "deleted": 0, "grace_s": grace.total_seconds(), "manifest": manifest,
    }
    if not apply:
        log = _Log(config.stack.cassandra, run, "dry-run")
        for a in candidates:
            log(a)
        return summary
    if progress is not None:
        progress.phase = f"applying {len(actions)} actions"
    work = [a for a in actions if a.action in ("candidate", "restore", "delete")]
    s3cfg, cass = config.stack.s3, config.stack.cassandra
    slices = max(1, min(len(work), spark.sparkContext.defaultParallelism * 2))
    results = (spark.sparkContext.parallelize(work, slices)
               .mapPartitions(lambda part: execute(s3cfg, cass, run, snapshot_at, part)).collect()) if work else []
    for key, what, detail in results:
        if what in ("quarantined", "restored", "deleted"):
            summary[what] += 1
        elif what == "failed":
            summary["failed"] += 1
            summary.setdefault("failures", []).append({"storage_key": key, "reason": detail})
    return summary
