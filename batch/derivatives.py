"""The derivatives job: every accepted image's content rendered at each (preset, format) of the
ladder, written next to the original and recorded in Cassandra ``derivatives``.

Incremental (default): reads the upload topic from the offsets this job stored last time
(``batch_offsets``) up to the log end seen at start, with Spark's Kafka source (a bounded batch
read). ``--backfill``: every image row in Cassandra instead of the topic. Either way:

1. each image's status comes from Cassandra ``images``: ``rejected``/``deleted`` are skipped;
   no row yet (the pipeline has not decided) is *pending*, and holds back the stored offset of
   its partition so the next run sees it again;
2. images are grouped by content hash (derivatives belong to the content: exact duplicates reuse
   the work); per content, the missing set is :func:`imgstream.domain.derivatives.plan` against
   the ``derivatives`` rows of the current ladder version, so a run after a complete one makes
   nothing;
3. per content, on an executor: get the original, render all its missing outputs from one
   decode, put each object, then write its row (object first: a row never points at nothing).
   A failure (object missing, corrupt, too large, store unavailable) is recorded in
   ``derivative_failures`` with its code and reason and counted; it never fails the batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Final, Iterable, Iterator, Mapping

from batch import runtime
from batch.config import BatchConfig
from imgstream.config import CassandraConfig, S3Config
from imgstream.domain import derivatives as dv
from imgstream.domain.errors import ImgstreamError

JOB: Final = "derivatives"
#: Statuses whose content gets derivatives. ``duplicate`` covers near duplicates (other bytes);
#: an exact duplicate's content is its original's, so its plan is already empty.
LIVE_STATUSES: Final = frozenset({"accepted", "duplicate"})
#: Statuses that never get derivatives.
SKIP_STATUSES: Final = frozenset({"rejected", "deleted"})
#: At most this many failures are listed in the summary (all are in ``derivative_failures``).
SUMMARY_FAILURES: Final = 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one content hash (or one image that was not rendered)."""

    kind: str  # created | complete | failed | skipped | pending
    sha256: str
    image_ids: tuple[str, ...]
    created: int = 0
    bytes: int = 0
    code: str = ""
    reason: str = ""
    partition: int = -1
    offset: int = -1


def classify(status: str | None) -> str:
    """``work``, ``skip`` or ``pending`` for an image status (``None`` = no row yet)."""
    if status is None or status == "pending":
        return "pending"
    if status in SKIP_STATUSES:
        return "skip"
    return "work" if status in LIVE_STATUSES else "skip"


def next_offsets(start: Mapping[int, int], ends: Mapping[int, int],
                 pending: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Offsets to store after a run: each partition's end, held back to its first pending event
    (which the next run then reads again; what was done before it is simply planned as done)."""
    out = {p: int(e) for p, e in ends.items()}
    for partition, offset in pending:
        out[partition] = min(out.get(partition, offset), offset)
    # Never move backwards past what an earlier run already stored.
    return {p: max(o, start.get(p, 0)) for p, o in out.items()}


def summarise(outcomes: Iterable[Outcome], *, run: str, mode: str, read: int) -> dict[str, Any]:
    """The job's JSON summary from all outcomes (pure)."""
    counts = {"created": 0, "skipped": 0, "failed": 0, "pending": 0, "reused": 0}
    contents = 0
    written = 0
    failures: list[dict[str, Any]] = []
    images = 0
    for o in outcomes:
        n = len(o.image_ids)
        images += n
        if o.kind == "created":
            contents += 1
            counts["created"] += o.created
            written += o.bytes
            counts["reused"] += n - 1  # other images of the same content used the same work
        elif o.kind == "complete":
            contents += 1
            counts["skipped"] += n
            counts["reused"] += n
        elif o.kind == "failed":
            contents += 1
            counts["failed"] += n
            if len(failures) < SUMMARY_FAILURES:
                failures.append({"sha256": o.sha256, "image_ids": list(o.image_ids), "code": o.code,
                                 "reason": o.reason})
        elif o.kind == "pending":
            counts["pending"] += n
        else:
            counts["skipped"] += n
    return {"job": JOB, "run_id": run, "mode": mode, "processed": images, "created": counts["created"],
            "skipped": counts["skipped"], "failed": counts["failed"], "pending": counts["pending"],
            "reused": counts["reused"], "contents": contents, "bytes_written": written,
            "events_read": read, "failures": failures}


# --- executor side --------------------------------------------------------------------------------


def _statuses(cfg: CassandraConfig, items: Iterable[runtime.Upload]) -> Iterator[tuple[runtime.Upload, str | None]]:
    """Each upload with its image's status from Cassandra (``None``: no row yet)."""
    from cassandra.concurrent import execute_concurrent_with_args

    session = runtime.cassandra(cfg)
    statement = runtime.prepared(session, "SELECT status FROM images WHERE image_id = ?")
    batch = list(items)
    # A lookup that fails (a timeout) leaves that image pending: it holds back its partition's
    # offset and is read again next run, instead of failing the whole task.
    results = execute_concurrent_with_args(session, statement, [(u.image_id,) for u in batch], concurrency=64,
                                           raise_on_first_error=False)
    for upload, (ok, rows) in zip(batch, results):
        row = rows.one() if ok else None
        yield upload, (row.status if row is not None else None)


def render_contents(stack_s3: S3Config, stack_cass: CassandraConfig, ladder: dv.Ladder, run: str,
                    items: Iterable[tuple[str, tuple[str, tuple[str, ...]]]]) -> Iterator[Outcome]:
    """Executor: for each (sha256, (storage_key, image_ids)) make the missing derivatives."""
    store = runtime.s3(stack_s3)
    session = runtime.cassandra(stack_cass)
    existing_q = runtime.prepared(session, "SELECT preset, format FROM derivatives WHERE sha256 = ? AND ladder = ?")
    insert = runtime.prepared(session, "INSERT INTO derivatives (sha256, ladder, preset, format, width, height, size, "
                                       "storage_key, created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    fail = runtime.prepared(session, "INSERT INTO derivative_failures (sha256, image_id, storage_key, code, reason, "
                                     "run_id, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
    clear = runtime.prepared(session, "DELETE FROM derivative_failures WHERE sha256 = ?")
    for sha, (key, image_ids) in items:
        try:
            have = [(sha, r.preset, r.format) for r in session.execute(existing_q, (sha, ladder.version))]
            targets = dv.plan(ladder, [sha], have)
            if not targets:
                yield Outcome("complete", sha, image_ids)
                continue
            if not key:
                raise dv.RenderFailed("the image row has no storage_key", code="object_missing")
            data = store.get(key)
            if data is None:
                raise dv.RenderFailed(f"original {key} is not in the object store", code="object_missing")
            rendered = dv.render(data, [(t.preset, t.max_edge, t.fmt) for t in targets])
            written = 0
            now = datetime.now(timezone.utc)
            by_output = {(t.preset, t.fmt): t for t in targets}
            for out in rendered:
                target = by_output[(out.preset, out.fmt)]
                store.put(target.key, out.data, content_type=out.content_type,
                          metadata={"sha256": sha, "ladder": ladder.version, "preset": out.preset})
                session.execute(insert, (sha, ladder.version, out.preset, out.fmt, out.width, out.height,
                                         len(out.data), target.key, now, run))
                written += len(out.data)
            session.execute(clear, (sha,))
            yield Outcome("created", sha, image_ids, created=len(rendered), bytes=written)
        except Exception as exc:  # noqa: BLE001 - one content's failure is data, never the batch's
            code = exc.code if isinstance(exc, ImgstreamError) else "internal_error"
            reason = exc.message if isinstance(exc, ImgstreamError) else f"{type(exc).__name__}: {exc}"
            try:
                session.execute(fail, (sha, image_ids[0], key, code, reason[:1000], run, datetime.now(timezone.utc)))
            except Exception as record_exc:  # noqa: BLE001 - still counted in the summary
                reason += f" (not recorded: {record_exc})"
            yield Outcome("failed", sha, image_ids, code=code, reason=reason)


# --- driver side ----------------------------------------------------------------------------------


def _stored_offsets(cfg: CassandraConfig, topic: str) -> dict[int, int]:
    session = runtime.cassandra(cfg)
    rows = session.execute("SELECT partition, next_offset FROM batch_offsets WHERE job = %s AND topic = %s",
                           (JOB, topic))
    return {r.partition: r.next_offset for r in rows}


def _store_offsets(cfg: CassandraConfig, topic: str, offsets: Mapping[int, int]) -> None:
    session = runtime.cassandra(cfg)
    now = datetime.now(timezone.utc)
    for p, o in offsets.items():
        session.execute("INSERT INTO batch_offsets (job, topic, partition, next_offset, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s)", (JOB, topic, p, o, now))


def build(spark: Any, config: BatchConfig, *, backfill: bool = False,
          progress: runtime.Progress | None = None) -> dict[str, Any]:
    """Run the job on ``spark``; returns its summary."""
    stack = config.stack
    ladder = config.ladder
    run = runtime.run_id(JOB)
    sc = spark.sparkContext
    topic = config.topic
    start: dict[int, int] = {}
    ends: dict[int, int] = {}
    read = 0

    def phase(text: str) -> None:
        if progress is not None:
            progress.phase = text

    if backfill:
        phase("scanning images")
        rows = runtime.scan_rdd(spark, stack.cassandra, "images", "image_id",
                                ("image_id", "sha256", "storage_key", "status"))
        with_status = rows.map(lambda r: (runtime.Upload(r["image_id"], "", r["sha256"] or "", r["storage_key"] or "",
                                                         "", -1, -1), r["status"]))
    else:
        phase("reading the upload topic")
        start = _stored_offsets(stack.cassandra, topic)
        ends = runtime.topic_ends(stack.kafka, topic)
        records = runtime.read_topic(spark, stack.kafka, topic, start, ends)
        events = sc.accumulator(0)

        def parse(rows: Iterable[Any]) -> Iterator[runtime.Upload]:
            batch = list(rows)
            events.add(len(batch))
            return runtime.parse_uploads(batch, topic)

        uploads = records.rdd.mapPartitions(parse)
        with_status = uploads.mapPartitions(lambda part: _statuses(stack.cassandra, part))
    with_status = with_status.cache()
    with_status.count()  # materialise once: the two branches below read the cache, not Kafka again

    def by_kind(pair: tuple[runtime.Upload, str | None]) -> str:
        return classify(pair[1])

    others = with_status.filter(lambda pair: by_kind(pair) != "work").map(
        lambda pair: Outcome(by_kind(pair), pair[0].sha256, (pair[0].image_id,),
                             partition=pair[0].partition, offset=pair[0].offset))
    contents = (with_status.filter(lambda pair: by_kind(pair) == "work")
                .map(lambda pair: (pair[0].sha256, (pair[0].storage_key, (pair[0].image_id,))))
                .reduceByKey(lambda a, b: (a[0], tuple(sorted(set(a[1]) | set(b[1]))))))
    slices = max(1, sc.defaultParallelism * 4)
    phase("rendering")
    rendered = contents.repartition(slices).mapPartitions(
        lambda part: render_contents(stack.s3, stack.cassandra, ladder, run, part))
    # One action: rendered outcomes and the skipped/pending images come back together.
    outcomes: list[Outcome] = rendered.union(others).collect()
    if backfill:
        read = sum(len(o.image_ids) for o in outcomes)
    else:
        read = int(events.value)
        pending = [(o.partition, o.offset) for o in outcomes if o.kind == "pending"]
        stored = next_offsets(start, ends, pending)
        _store_offsets(stack.cassandra, topic, stored)
    with_status.unpersist()
    summary = summarise(outcomes, run=run, mode="backfill" if backfill else "incremental", read=read)
    summary["ladder"] = ladder.version
    if not backfill:
        summary["offsets"] = {"from": {str(k): v for k, v in sorted(start.items())},
                              "to": {str(k): v for k, v in sorted(ends.items())}}
    return summary


def outcome_dict(o: Outcome) -> dict[str, Any]:
    return asdict(o)
