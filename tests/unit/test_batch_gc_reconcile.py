"""The pure decisions of reconcile, gc and reorganize, on hand-built snapshots."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from batch import gc, reconcile, reorganize
from batch.inventory import Inventory, Obj
from batch.runtime import Upload, token_slices, MIN_TOKEN, MAX_TOKEN
from imgstream.domain.storage_layout import LAYOUT_V2, derivative_key, image_key, quarantine_key

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
OLD = NOW - timedelta(days=10)
NEW = NOW - timedelta(seconds=30)
GRACE = timedelta(days=3)
TOPIC = "images.uploaded"


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def row(image_id: str, n: int, status: str = "accepted", *, offset: int = 0, key: str | None = None) -> dict:
    return {"image_id": image_id, "sha256": sha(n), "storage_key": key or image_key(sha(n)), "status": status,
            "processed_at": OLD, "source_topic": TOPIC, "source_partition": 0, "source_offset": offset}


def event(image_id: str, n: int, *, offset: int = 0, at: datetime = OLD) -> Upload:
    return Upload(image_id, "p", sha(n), image_key(sha(n)), at.strftime("%Y-%m-%dT%H:%M:%S.000Z"), 0, offset)


def obj(key: str, at: datetime = OLD, size: int = 10) -> Obj:
    return Obj(key, size, at)


def agreeing() -> Inventory:
    inv = Inventory()
    inv.rows = {"i1": row("i1", 1, offset=0), "i2": row("i2", 2, "duplicate", offset=1)}
    inv.events = [event("i1", 1, offset=0), event("i2", 2, offset=1)]
    inv.earliest = {0: 0}
    inv.objects = {image_key(sha(1)): obj(image_key(sha(1))), image_key(sha(2)): obj(image_key(sha(2)))}
    inv.pg_rows = {i: {"status": r["status"], "storage_key": r["storage_key"]} for i, r in inv.rows.items()}
    return inv


def found(inv: Inventory, grace: timedelta = GRACE) -> dict[str, int]:
    result = reconcile.compare(inv, now=NOW, grace=grace, topic=TOPIC)
    return {k: len(v) for k, v in result.items() if v}


def test_reconcile_clean_snapshot_agrees() -> None:
    assert found(agreeing()) == {}


def test_reconcile_names_each_kind_of_disagreement() -> None:
    inv = agreeing()
    inv.events.append(event("i3", 3, offset=2))  # old event: no row, no object
    inv.events.append(event("i4", 4, offset=3, at=NEW))  # in flight: no row yet is fine
    inv.objects[image_key(sha(4))] = obj(image_key(sha(4)), NEW)
    inv.rows["i5"] = row("i5", 5, offset=4)  # row whose event is retained but absent, no object
    inv.objects[image_key(sha(6))] = obj(image_key(sha(6)))  # orphan
    inv.objects[image_key(sha(7))] = obj(image_key(sha(7)), NEW)  # young: not yet an orphan
    inv.pg_rows["i1"] = {"status": "rejected", "storage_key": image_key(sha(1))}
    inv.pg_rows["zz"] = {"status": "accepted", "storage_key": "x"}
    inv.derivatives = [{"sha256": sha(1), "storage_key": derivative_key(sha(1), "l1", "thumb", "webp")}]
    assert found(inv) == {"missing_object": 1, "event_without_row": 1, "row_without_event": 1,
                          "row_without_object": 1, "orphan_object": 1, "pg_missing": 1, "pg_mismatch": 1,
                          "pg_extra": 1, "derivative_without_object": 1}


def test_reconcile_scoped_to_a_producer_prefix_judges_only_its_images() -> None:
    """The crash matrix runs reconcile on a shared stack: only its own producers' images count."""
    inv = agreeing()
    for r in inv.rows.values():
        r["producer"] = "synthetic-chaos-a"
    for i, r in inv.pg_rows.items():
        r["producer"] = "synthetic-chaos-a"
    inv.events = [replace(e, producer="synthetic-chaos-a") for e in inv.events]
    inv.events.append(event("other", 3, offset=2))  # another run's event, no row: not ours
    inv.rows["o2"] = {**row("o2", 8, offset=5), "producer": "alice"}  # no object, no event: not ours
    inv.objects[image_key(sha(6))] = obj(image_key(sha(6)))  # orphan: whose? not judged when scoped
    assert found(inv) == {"missing_object": 1, "event_without_row": 1, "row_without_object": 1,
                          "row_without_event": 1, "orphan_object": 1, "pg_missing": 1}
    mine = inv.scoped(lambda p: p.startswith("synthetic-chaos-"))
    assert set(mine.rows) == {"i1", "i2"} and len(mine.events) == 2 and set(mine.pg_rows or {}) == {"i1", "i2"}
    assert reconcile.compare(mine, now=NOW, grace=GRACE, topic=TOPIC, orphans=False) == {
        k: [] for k in reconcile.KINDS}
    mine.rows["i1"]["status"] = "rejected"  # a real disagreement inside the scope still shows
    result = reconcile.compare(mine, now=NOW, grace=GRACE, topic=TOPIC, orphans=False)
    assert {k: len(v) for k, v in result.items() if v} == {"pg_mismatch": 1}


def test_reconcile_rows_before_the_retained_log_need_no_event() -> None:
    inv = agreeing()
    inv.earliest = {0: 5}
    inv.events = []
    assert found(inv) == {}


def test_reconcile_follows_a_reorganized_key() -> None:
    inv = agreeing()
    new = LAYOUT_V2.key(sha(1))
    inv.rows["i1"] = row("i1", 1, key=new)
    inv.pg_rows["i1"]["storage_key"] = new
    inv.objects[new] = obj(new)
    del inv.objects[image_key(sha(1))]  # old key retired; the event still names it
    assert found(inv) == {}


def plan(inv: Inventory, grace: timedelta = GRACE) -> dict[str, tuple[str, str]]:
    return {a.key: (a.action, a.reason) for a in gc.plan(inv, ladder="l1", now=NOW, grace=grace)}


def test_gc_keeps_everything_referenced() -> None:
    inv = agreeing()
    inv.objects[derivative_key(sha(1), "l1", "thumb", "webp")] = obj(derivative_key(sha(1), "l1", "thumb", "webp"))
    inv.derivatives = [{"sha256": sha(1), "ladder": "l1", "storage_key": derivative_key(sha(1), "l1", "thumb", "webp")}]
    inv.events.append(event("i9", 9))  # pending: no row yet, its object is referenced
    inv.objects[image_key(sha(9))] = obj(image_key(sha(9)))
    inv.objects["receipts/p/x.json"] = obj("receipts/p/x.json")
    assert plan(inv) == {}


def test_gc_candidates_and_reasons() -> None:
    inv = agreeing()
    inv.objects[image_key(sha(6))] = obj(image_key(sha(6)))
    inv.objects[image_key(sha(7))] = obj(image_key(sha(7)), NEW)
    inv.rows["i8"] = row("i8", 8, "deleted")
    inv.objects[image_key(sha(8))] = obj(image_key(sha(8)))
    for ladder in ("l0", "l1"):
        k = derivative_key(sha(1), ladder, "thumb", "webp")
        inv.objects[k] = obj(k)
    k8 = derivative_key(sha(8), "l1", "thumb", "webp")
    inv.objects[k8] = obj(k8)
    inv.derivatives = [{"sha256": sha(8), "ladder": "l1", "storage_key": k8}]
    assert plan(inv) == {
        image_key(sha(6)): ("candidate", "orphan"),
        image_key(sha(8)): ("candidate", "deleted_image"),
        derivative_key(sha(1), "l0", "thumb", "webp"): ("candidate", "retired_ladder"),
        derivative_key(sha(1), "l1", "thumb", "webp"): ("candidate", "orphan_derivative"),
        k8: ("candidate", "deleted_content"),
    }


def test_gc_shared_content_goes_only_with_its_last_live_image() -> None:
    inv = agreeing()
    inv.rows["i1b"] = {**row("i1b", 1), "image_id": "i1b"}
    inv.rows["i1"]["status"] = "deleted"
    assert plan(inv) == {}  # another producer's image still uses those bytes
    inv.rows["i1b"]["status"] = "deleted"
    assert plan(inv) == {image_key(sha(1)): ("candidate", "deleted_image")}


def test_gc_quarantine_is_restored_kept_or_deleted() -> None:
    inv = agreeing()
    back, gone, young, both = image_key(sha(1)), image_key(sha(6)), image_key(sha(7)), image_key(sha(5))
    del inv.objects[back]  # quarantined by an earlier run, referenced again now
    inv.objects[quarantine_key(back)] = obj(quarantine_key(back))
    inv.objects[quarantine_key(gone)] = obj(quarantine_key(gone))
    inv.objects[quarantine_key(young)] = obj(quarantine_key(young), NEW)
    inv.objects[both] = obj(both)  # an earlier run died between its copy and the delete
    inv.objects[quarantine_key(both)] = obj(quarantine_key(both))
    actions = {(a.action, a.key, a.reason) for a in gc.plan(inv, ladder="l1", now=NOW, grace=GRACE)}
    assert actions == {("restore", back, "referenced again"), ("delete", gone, "unreferenced after quarantine"),
                       ("keep", young, "in quarantine for less than the grace period"),
                       ("candidate", both, "orphan"), ("keep", both, "source still present")}


def test_gc_zero_grace_takes_young_orphans() -> None:
    inv = agreeing()
    inv.objects[image_key(sha(7))] = obj(image_key(sha(7)), NEW)
    assert plan(inv, timedelta(0)) == {image_key(sha(7)): ("candidate", "orphan")}


def test_reorganize_plans_contents_not_in_the_target_layout() -> None:
    rows = [row("a", 1), row("b", 1, "duplicate"), row("c", 2, key=LAYOUT_V2.key(sha(2))), row("d", 3, "deleted"),
            {**row("e", 4), "storage_key": None}]
    assert reorganize.plan(rows, LAYOUT_V2) == {sha(1): (image_key(sha(1)), ("a", "b"))}


def test_reorganize_finishes_a_relocation_killed_after_its_rows_switched() -> None:
    moved = LAYOUT_V2.key(sha(5))
    rows = [row("a", 5, key=moved), row("b", 6, key=LAYOUT_V2.key(sha(6)))]
    relocations = [
        {"sha256": sha(5), "old_key": image_key(sha(5)), "new_key": moved, "layout": LAYOUT_V2.name,
         "state": "verified"},  # killed between the row rewrite and 'switched'
        {"sha256": sha(6), "old_key": image_key(sha(6)), "new_key": LAYOUT_V2.key(sha(6)),
         "layout": LAYOUT_V2.name, "state": "switched"},  # done: retirement's business, not a move
        {"sha256": sha(7), "old_key": image_key(sha(7)), "new_key": "elsewhere/7", "layout": "v9",
         "state": "copied"},  # another layout's leftovers are not this run's
    ]
    assert reorganize.plan(rows, LAYOUT_V2) == {}
    assert reorganize.plan(rows, LAYOUT_V2, relocations) == {sha(5): (image_key(sha(5)), ())}


def test_token_slices_cover_the_ring() -> None:
    slices = token_slices(7)
    assert slices[0][0] == MIN_TOKEN and slices[-1][1] == MAX_TOKEN
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
