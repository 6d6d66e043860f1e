"""The pipeline's Python operators: thin wiring of :mod:`imgstream` logic to Flink state.

Every stateful decision is made by ``imgstream.domain.dedup``/``windows``; these classes only load
state, call it, store the result, write it and emit. State holds plain lists and dicts (never
pickled classes) so savepoints survive code changes.

Streams between operators carry image dicts: the event's fields plus ``event_time``, its Kafka
coordinates and, once decided, the verdict fields (``status``, ``duplicate_of``, ...).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AbstractSet as Set, Any, Iterable

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig

from imgstream.adapters.kafka import end_offsets
from imgstream.config import KafkaConfig
from imgstream.domain.cleaning import Cleaned, DeadLetter, Heartbeat, Source, clean, clean_deletion
from imgstream.domain.clock import CLOCK_SKEW_TOLERANCE_MS, clamp_event_time
from imgstream.domain.dedup import STATUS_REJECTED, DedupPolicy, Deduplicator, ImageRef, Verdict
from imgstream.domain.deletion import STATUS_DELETED
from imgstream.domain.hashing import parse_hash
from imgstream.domain.producers import USER_REALM, dedup_realm
from imgstream.domain.windows import Lateness, WindowBook, classify

from flink_jobs.cassandra_sink import (
    CassandraWriter, Write, deletion_writes, image_writes, maybe_written, superseded_writes, window_writes,
)  # fmt: skip
from flink_jobs.mirror import MirroredMap
from flink_jobs import worker_gc

log = logging.getLogger(__name__)

DLQ_TAG = OutputTag("dead-letters", Types.STRING())

#: Flink state TTL (processing time) is only garbage collection; decisions age by event time.
#: Keep keys a while past their event-time TTL so replays within it still find them.
GC_FACTOR = 2


def _ttl(state: Any, ttl_ms: int) -> Any:
    # ReturnExpiredIfNotCleanedUp + OnCreateAndWrite keeps PyFlink's Python-side state cache
    # on; NeverReturnExpired disables it for every state of the worker, making each read and
    # each write a round trip to the JVM. Decisions ignore expired entries by event time
    # anyway, so seeing one that is not yet collected changes nothing.
    # No background cleanup: on the heap backend it visits whole state entries on every state
    # access, and an entry here is the whole index of the one key (INDEX_KEY), which Flink
    # copies to filter it - O(index) per write, 77 % of the TaskManager's CPU in a profile.
    # Collection is the event-time prune (Deduplicator.prune) plus Flink's lazy removal on read;
    # the TTL stays declared so savepoints keep their state serializer.
    config = (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms * GC_FACTOR))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
        .disable_cleanup_in_background()
        .build()
    )
    state.enable_time_to_live(config)
    return state


def _ref(image: dict[str, Any]) -> ImageRef:
    return ImageRef(image["image_id"], image["producer"], image["sha256"], parse_hash(image["phash"]), image["event_time"])


def with_lateness(image: dict[str, Any], watermark: int, window_ms: int, allowed_lateness_ms: int) -> dict[str, Any]:
    """``image`` with its lateness against ``watermark`` (the watermark when it reached the
    dedup index), which travels with the verdict to its window and its Cassandra rows."""
    lateness = classify(int(image["event_time"]), watermark, window_ms, allowed_lateness_ms)
    return {**image, "lateness": lateness.value, "watermark": watermark}


# --- cleaning ------------------------------------------------------------------------------


class CleanFunction(ProcessFunction):
    """Raw Kafka rows -> image dicts (main) and dead letters (JSON, side output).

    A dead letter also continues on the main output as a ``rejected`` verdict: it is counted
    in its window and gets an images row, but never meets the dedup index.

    **Clock skew.** The record timestamp is the source's event time, which the SQL source
    already bounded by the Kafka append time (:func:`~flink_jobs.pipeline.event_time_sql`);
    the event time parsed here is bounded the same way (:func:`clamp_event_time`), so the
    windows use the time the watermark was built from. Clamped events are counted in the
    operator's metrics ``clockSkewClamped`` and ``clockSkewMaxMs`` (Flink REST / web UI).
    """

    def __init__(self, clock_skew_tolerance_ms: int = CLOCK_SKEW_TOLERANCE_MS) -> None:
        self.clock_skew_tolerance_ms = clock_skew_tolerance_ms
        self.skew_clamped: Any = None
        self.max_skew_ms = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_gc.install(runtime_context)
        metrics = runtime_context.get_metrics_group()
        self.skew_clamped = metrics.counter("clockSkewClamped")
        metrics.gauge("clockSkewMaxMs", lambda: self.max_skew_ms)

    def _event_time(self, claimed: int, appended: int | None) -> int:
        out = clamp_event_time(claimed, appended, self.clock_skew_tolerance_ms)
        if out.clamped:
            if self.skew_clamped is not None:
                self.skew_clamped.inc()
            if out.skew_ms > self.max_skew_ms:
                self.max_skew_ms = out.skew_ms
                log.warning("received_at %d ms ahead of the Kafka append time: event time clamped", out.skew_ms)
        return out.event_time

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterable[Any]:
        raw, topic, partition, offset = value[0], value[1], value[2], value[3]
        appended = ctx.timestamp()
        out = clean(raw, Source(topic, partition, offset, appended))
        if isinstance(out, Heartbeat):
            return  # it advanced its partition's watermark in the source; nothing to process
        if isinstance(out, Cleaned):
            image = out.event.to_dict()
            image.update(event_time=self._event_time(out.event_time, appended), topic=topic, partition=partition,
                         offset=offset)  # fmt: skip
            yield image
            return
        assert isinstance(out, DeadLetter)
        yield DLQ_TAG, out.to_json().decode()
        yield {
            "image_id": out.image_id,
            "producer": out.producer,
            "content_type": out.content_type,
            "event_time": self._event_time(out.event_time, appended) if out.event_time is not None else appended,
            "reason": out.reason,
            "error": out.error[:1000],
            "topic": topic,
            "partition": partition,
            "offset": offset,
            **Verdict.rejected(out.image_id).to_dict(),
        }


# --- decide: replay drop, exact and near duplicates, windows, Cassandra (one keyed operator) ---

#: Every user's image goes to one index: "duplicate" compares each image with every earlier one
#: of its realm (:func:`imgstream.domain.producers.dedup_realm`). The user realm keeps this key,
#: so a savepoint taken before realms existed still restores the users' index.
INDEX_KEY = "index"


def index_key(image: dict[str, Any]) -> str:
    """The key ``decide`` runs under: one index per dedup realm, so a synthetic image (tests,
    benchmarks) is never the "original" of a user's upload, nor the other way round."""
    realm = dedup_realm(image.get("producer"))
    return INDEX_KEY if realm == USER_REALM else f"{INDEX_KEY}-{realm}"
#: Images wait for the watermark in buckets of this much event time (one timer per bucket,
#: not per image: each timer registration is a round trip from Python to the JVM). It must
#: divide the window length, so an image is decided before its window fires.
ORDER_BUCKET_MS = 200
#: How often (event time) the index drops entries whose TTL has passed. A prune visits the
#: whole index, so it must be rare: every minute it took 16 % of deciding when a backlog
#: (event time passing ~10x faster than real time) was worked off. An hour keeps at most an
#: hour's entries past their expiry, on top of the slack below ...
PRUNE_EVERY_MS = 3600 * 1000
#: ... judged this far behind the watermark, so late images still see what they could match.
PRUNE_SLACK_MS = 24 * 3600 * 1000


#: Verdict flag: the event may have been written before this attempt (see Decide.replay_horizon).
RECHECK = "recheck"


def _pending_key(image: dict[str, Any]) -> str:
    """Sorts as ``(event_time, image_id)``, the decision order; unique per Kafka record."""
    return f"{int(image['event_time']):015d}|{image['image_id']}|{image['partition']}|{image['offset']}"


class Decide(KeyedProcessFunction):
    """Decides every image and counts every window, keyed by :func:`index_key`: the single-index
    operator of the pipeline before issue 17. ``build()`` now wires the sharded stages of
    :mod:`flink_jobs.sharded`, which reuse its helpers and keep its crash-correctness rules.

    * **Order.** An image ahead of the watermark waits in ``pending`` until the watermark
      passes its 200 ms bucket (the first bucket timer of a watermark advance decides every
      image at or behind the watermark); images are decided in ``(event_time, image_id)`` order,
      which a replay after a failure reproduces; rejected events wait with them (they skip
      the index). An event already behind the watermark (late) is handled on arrival.
      Lateness is classified on arrival, against the watermark or, when higher, the point the
      windows were finalised through (kept in state: a restore starts without a watermark).
    * **Decisions**: one :class:`~imgstream.domain.dedup.Deduplicator` (replay drop, exact, near).
    * **Windows**: one :class:`~imgstream.domain.windows.WindowBook`; the watermark passing a
      window's end fires it, passing its end plus the allowed lateness makes it final.
    * **Output**: per step (an arrival or a timer), one record
      ``{"verdicts": [...], "windows": [...]}``, which :class:`WriteSteps` writes to Cassandra
      (and tests collect).

    All state is ``MapState`` mirrored in memory (:class:`~flink_jobs.mirror.MirroredMap`):
    no round trip to the JVM per decision. One operator instead of a chain of them because
    every hop between Python operators costs a JVM round trip per record (docs/flink-jobs.md).
    """

    def __init__(self, policy: DedupPolicy, window_ms: int, allowed_lateness_ms: int, kafka: KafkaConfig | None = None,
                 topic: str = "", recheck_all: bool = False) -> None:  # fmt: skip
        if window_ms % ORDER_BUCKET_MS:
            raise ValueError(f"window_ms must be a multiple of {ORDER_BUCKET_MS}, got {window_ms}")
        self.policy = policy
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.kafka = kafka
        self.topic = topic
        self.recheck_all = recheck_all

    def open(self, runtime_context: RuntimeContext) -> None:
        def mirrored(name: str, ttl_ms: int = 0) -> MirroredMap:
            descriptor = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
            if ttl_ms:
                _ttl(descriptor, ttl_ms)
            return MirroredMap(runtime_context.get_map_state(descriptor))

        policy = self.policy
        self.pending = mirrored("pending")
        replays, exact, bands = (
            mirrored("replays", policy.replay_ttl_ms),
            mirrored("exact", policy.exact_ttl_ms),
            mirrored("bands", policy.near_ttl_ms),
        )
        windows = mirrored("windows")
        # the watermark the windows were finalised through: watermarks are not checkpointed,
        # so after a restore lateness is judged against this (never reopening a final window)
        progress = mirrored("progress")
        self.mirrors = (self.pending, replays, exact, bands, windows, progress)
        self.dedup = Deduplicator(policy, replays=replays, exact=exact, bands=bands)
        self.book = WindowBook(self.window_ms, self.allowed_lateness_ms, windows, progress)
        self.key: Any = None
        self.opened: set[Any] = set()  # keys whose index was checked for re-banding in this attempt
        # (key, timestamp) of the timers registered in this attempt (re-registering is harmless):
        # timers are per key, so one realm's bucket timer must not stand in for another's
        self.timers: set[tuple[Any, int]] = set()
        self.pruned_at: dict[Any, int] = {}  # key -> event time of its last prune
        self.decided_to: int | None = None  # pending holds nothing at or before it
        self.horizon: dict[int, int] | None = None  # see replay_horizon

    def _use_key(self, key: Any) -> None:
        if key != self.key:
            for mirror in self.mirrors:
                mirror.use(key)
            self.book.reset()
            self.decided_to = None
            self.key = key
            if key not in self.opened:  # once per key and attempt: it visits the whole index
                self.opened.add(key)
                moved = self.dedup.reband()  # an index stored under other bands (older version)
                if moved:
                    log.info("re-banded %d near-duplicate candidates of key %r to %s", moved, key,
                             self.policy.band_plan)
            if self.horizon is None:
                self.horizon = self.replay_horizon()

    def replay_horizon(self) -> dict[int, int]:
        """Upload-topic offsets below which an event may already have been decided and written
        by an earlier attempt: the end offsets now when this task starts on restored state (or
        when ``recheck_all``, after ``make flink-reset``), else none. Its verdicts are tagged
        ``recheck`` so the writer removes rows a different earlier verdict left (item 4 of
        issue 16); a fresh job's verdicts need no look-up."""
        restored = any(len(mirror) for mirror in self.mirrors)
        if self.kafka is None or not self.topic or not (restored or self.recheck_all):
            return {}
        horizon = asyncio.run(end_offsets(self.kafka, self.topic))
        log.info("events of %s below offsets %s may be replays: their earlier rows are checked", self.topic, horizon)
        return horizon

    def _timer(self, ctx: Any, timestamp: int) -> None:
        if (self.key, timestamp) not in self.timers:
            ctx.timer_service().register_event_time_timer(timestamp)
            self.timers.add((self.key, timestamp))

    def process_element(self, image: dict[str, Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        self._use_key(ctx.get_current_key())
        # after a restore the watermark restarts at Long.MIN_VALUE: judge against the book's
        # finalised-through point, or a too-late event would count as on time
        watermark = self.book.effective_watermark(ctx.timer_service().current_watermark())
        ts = int(image["event_time"])
        image = with_lateness(image, watermark, self.window_ms, self.allowed_lateness_ms)
        if ts <= watermark:
            yield from self._finish(self._decide([image]), ctx)
            return
        self.pending[_pending_key(image)] = image
        self._timer(ctx, ts - ts % ORDER_BUCKET_MS + ORDER_BUCKET_MS - 1)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        self._use_key(ctx.get_current_key())
        self.timers.discard((self.key, timestamp))
        horizon = max(timestamp, ctx.timer_service().current_watermark())
        yield from self._finish(self._decide(self._due(horizon)), ctx, timestamp)
        pruned_at = self.pruned_at.get(self.key)
        if pruned_at is None or timestamp - pruned_at >= PRUNE_EVERY_MS:
            self.dedup.prune(timestamp - PRUNE_SLACK_MS)
            self.pruned_at[self.key] = timestamp

    def _due(self, horizon: int) -> list[dict[str, Any]]:
        """Pending images at or before ``horizon`` (the watermark), in decision order, removed.

        One watermark advance fires the timers of many buckets; the first of them decides the
        images of all of them, so their writes share one step (one wait for Cassandra) instead
        of one step per bucket. Deciding early is safe: an image at or behind the watermark
        can no longer be overtaken by an on-time one (any later arrival is late). Windows
        still advance timer by timer, so revisions do not depend on how far a watermark jumps.
        """
        if self.decided_to is not None and horizon <= self.decided_to:
            return []  # nothing pending is at or behind a horizon already decided
        due = sorted(key for key in self.pending if int(key[:15]) <= horizon)
        images = [self.pending[key] for key in due]
        for key in due:
            del self.pending[key]
        self.decided_to = horizon
        return images

    def _decide(self, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        verdicts = []
        for image in images:
            if image.get("status") == STATUS_REJECTED:  # never meets the index
                verdicts.append(image)
            else:
                verdict = self.dedup.process(_ref(image))
                if verdict is None:  # a replay, dropped
                    continue
                verdicts.append({**image, **verdict.to_dict()})
            if self.horizon and maybe_written(verdicts[-1], self.topic, self.horizon):
                verdicts[-1][RECHECK] = True
        return verdicts

    def _finish(self, verdicts: list[dict[str, Any]], ctx: Any, watermark: int | None = None) -> Iterable[Any]:
        """Count ``verdicts`` in their windows, advance the windows to ``watermark``, emit."""
        windows = []
        for verdict in verdicts:
            lateness, arrived_at = Lateness(verdict["lateness"]), int(verdict["watermark"])
            version = self.book.add(verdict, lateness, arrived_at)
            if version is not None:
                windows.append(version)
            if lateness is not Lateness.TOO_LATE:  # a too-late event's window is gone already
                for deadline in self.book.deadlines(int(verdict["event_time"])):
                    if deadline > arrived_at:  # a passed deadline was handled on arrival
                        self._timer(ctx, deadline)
        if watermark is not None:
            windows.extend(self.book.advance(watermark))
        self.book.flush()
        if verdicts or windows:
            yield {"verdicts": verdicts, "windows": windows}


class WriteSteps(FlatMapFunction):
    """Writes each step of :class:`Decide` to Cassandra - its verdicts (images, duplicates,
    late_events rows) and window versions (upload_stats) - and emits nothing: the rows are
    the result. (Passing each step on cost encoding it again in Python and decoding it in the
    JVM, only for a discarding sink to drop it.)

    A step is written whole before the next one is taken, and a checkpoint barrier reaches
    this operator only after every step before it (PyFlink finishes the bundle first), so no
    checkpoint completes with a write pending; the writes are idempotent upserts, so steps
    replayed after a restore rewrite the same rows. A failed write fails the task.

    It is a separate operator so that it can run in another Python worker than ``decide``: the
    driver's work (about a quarter of deciding's time when ``decide`` wrote itself) then
    overlaps with deciding instead of following it. One record per step crosses, not one per
    image.

    **Replays.** A replay may decide an image differently than the attempt that failed (a
    late image decided on arrival, then in event-time order), so for every verdict ``decide``
    tagged ``recheck`` (an event that may have been written before this attempt: see
    :meth:`Decide.replay_horizon`) the stored images row is read first and the rows its old
    verdict implied are deleted (:func:`superseded_writes`). Other verdicts cost no read.
    """

    def __init__(self, writer: CassandraWriter, window_ms: int) -> None:
        self.writer = writer
        self.window_ms = window_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_gc.install(runtime_context)
        self.writer.open()

    def close(self) -> None:
        self.writer.close()

    def flat_map(self, step: dict[str, Any]) -> Iterable[Any]:
        recheck = [v for v in step["verdicts"] if v.get(RECHECK)]
        if not recheck:
            self.writer.write(step_writes(step, self.window_ms))
            return ()
        previous = self.writer.previous([v["image_id"] for v in recheck])
        deleted = {i for i, row in previous.items() if row.get("status") == STATUS_DELETED}
        writes = [w for v in recheck for w in superseded_writes(v, previous.get(v["image_id"]), self.window_ms)]
        self.writer.write(writes + step_writes(step, self.window_ms, deleted))
        return ()


def step_writes(step: dict[str, Any], window_ms: int, deleted: Set[str] = frozenset()) -> list[Write]:
    """The Cassandra writes of one step, verdicts first, then window versions in order;
    ``deleted``: images whose stored row says deleted (their status stays so, on a replay)."""
    return [w for v in step["verdicts"] for w in image_writes(v, window_ms, deleted=v["image_id"] in deleted)] + [
        w for row in step["windows"] for w in window_writes(row, window_ms)
    ]


# --- deletions: image.deleted events -> the image's status ------------------------------------


class ApplyDeletions(ProcessFunction):
    """Raw values of the deletion topic -> the image's status ``deleted`` in Cassandra; bad
    values to the dead letters (side output, like ``clean``'s).

    Stateless in Flink: each event reads the image's row and applies
    :func:`~flink_jobs.cassandra_sink.deletion_writes` (only the owner's live image changes), so
    a replay after a restore, or a duplicated event, changes nothing more. A failed read or
    write fails the task (restart from the checkpoint, replayed: idempotent). Counted in the
    operator metrics ``deletionsApplied`` and ``deletionsIgnored`` (Flink REST / web UI).

    Its own operator on its own source: the upload path's operators and state are untouched, so
    a savepoint of the job before deletions existed still maps (new operators start empty).
    """

    def __init__(self, writer: CassandraWriter, topic: str) -> None:
        self.writer = writer
        self.topic = topic
        self.applied: Any = None
        self.ignored: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_gc.install(runtime_context)
        metrics = runtime_context.get_metrics_group()
        self.applied = metrics.counter("deletionsApplied")
        self.ignored = metrics.counter("deletionsIgnored")
        self.writer.open()

    def close(self) -> None:
        self.writer.close()

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterable[Any]:
        out = clean_deletion(value, Source(self.topic, -1, -1, ctx.timestamp()))
        if isinstance(out, DeadLetter):
            yield DLQ_TAG, out.to_json().decode()
            return
        row = self.writer.previous([out.image_id]).get(out.image_id)
        decision, writes = deletion_writes(out, row)
        if writes:
            self.writer.write(writes)
            self.applied.inc()
        else:
            self.ignored.inc()
            log.info("deletion of %s ignored: %s", out.image_id, decision.value)
