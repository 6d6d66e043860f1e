"""The pipeline's Python operators: thin wiring of :mod:`imgstream` logic to Flink state.

Every stateful decision is made by ``imgstream.domain.dedup``/``windows``; these classes only load
state, call it, store the result, write it and emit. State holds plain lists and dicts (never
pickled classes) so savepoints survive code changes.

Streams between operators carry image dicts: the event's fields plus ``event_time``, its Kafka
coordinates and, once decided, the verdict fields (``status``, ``duplicate_of``, ...).
"""

from __future__ import annotations

import logging
from typing import AbstractSet as Set, Any, Callable, Iterable

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import FlatMapFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig

from imgstream.domain.cleaning import REASON_MISROUTED, Cleaned, DeadLetter, Heartbeat, Source, clean, clean_deletion, refuse
from imgstream.domain.clock import CLOCK_SKEW_TOLERANCE_MS, clamp_event_time
from imgstream.domain.dedup import ImageRef, Verdict
from imgstream.domain.events import ImageUploaded
from imgstream.domain.deletion import STATUS_DELETED
from imgstream.domain.hashing import key_of_text, key_text, parse_hash
from imgstream.domain.windows import classify

from flink_jobs.cassandra_sink import (
    CassandraWriter, Write, deletion_writes, image_writes, superseded_writes, window_writes,
)  # fmt: skip
from flink_jobs import worker_gc
from flink_jobs.mirror import KeyCodec

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
    # access, and an entry here is the whole map of one key (a shard's index), which Flink
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


class Cleaner:
    """Raw records of the upload topic -> image dicts and dead letters, for the operator that
    cleans them (``decide: exact``, :class:`flink_jobs.sharded.DecideExact`: cleaning runs in
    the Python worker that decides, so a record crosses into Python once).

    A dead letter also continues as a ``rejected`` verdict: it is counted in its window and
    gets an images row, but never meets the dedup index.

    **Clock skew.** The record timestamp is the source's event time, which the SQL source
    already bounded by the Kafka append time (:func:`~flink_jobs.pipeline.event_time_sql`);
    the event time parsed here is bounded the same way (:func:`clamp_event_time`), so the
    windows use the time the watermark was built from. Clamped events are counted in the
    operator's metrics ``clockSkewClamped`` and ``clockSkewMaxMs`` (Flink REST / web UI).
    """

    def __init__(self, topic: str, clock_skew_tolerance_ms: int = CLOCK_SKEW_TOLERANCE_MS) -> None:
        self.topic = topic
        self.clock_skew_tolerance_ms = clock_skew_tolerance_ms
        self.skew_clamped: Any = None
        self.max_skew_ms = 0

    def open(self, runtime_context: RuntimeContext) -> None:
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

    def outputs(self, raw: Any, partition: int, offset: int, appended: int,
                admit: Callable[[ImageUploaded], str | None] | None = None) -> Iterable[Any]:
        """The image dict of one raw value (nothing for a heartbeat: it advanced its partition's
        watermark in the source), or its dead letter (``(DLQ_TAG, json)``) and its rejected
        verdict. ``admit`` may refuse a valid event: it returns why (a
        :data:`~imgstream.domain.cleaning.REASON_MISROUTED` dead letter), or None."""
        source = Source(self.topic, partition, offset, appended)
        out = clean(raw, source)
        if isinstance(out, Heartbeat):
            return
        if isinstance(out, Cleaned):
            refused = admit(out.event) if admit is not None else None
            if refused is None:
                image = out.event.to_dict()
                image.update(event_time=self._event_time(out.event_time, appended), topic=self.topic,
                             partition=partition, offset=offset)  # fmt: skip
                yield image
                return
            log.warning("event at %s/%d/%d refused: %s", self.topic, partition, offset, refused)
            out = refuse(raw, source, REASON_MISROUTED, refused)
        assert isinstance(out, DeadLetter)
        yield DLQ_TAG, out.to_json().decode()
        yield {
            "image_id": out.image_id,
            "producer": out.producer,
            "content_type": out.content_type,
            "event_time": self._event_time(out.event_time, appended) if out.event_time is not None else appended,
            "reason": out.reason,
            "error": out.error[:1000],
            "topic": self.topic,
            "partition": partition,
            "offset": offset,
            **Verdict.rejected(out.image_id).to_dict(),
        }


# --- shared by the decide stages (flink_jobs/sharded.py) and the writer ---------------------

#: The near index's band keys (ints) as its state stores them: the text they had as strings.
BAND_KEYS = KeyCodec(key_text, key_of_text)

#: How often (event time) the index drops entries whose TTL has passed. A prune visits the
#: whole index, so it must be rare: every minute it took 16 % of deciding when a backlog
#: (event time passing ~10x faster than real time) was worked off. An hour keeps at most an
#: hour's entries past their expiry, on top of the slack below ...
PRUNE_EVERY_MS = 3600 * 1000
#: ... judged this far behind the watermark, so late images still see what they could match.
PRUNE_SLACK_MS = 24 * 3600 * 1000


#: Verdict flag: the event may have been written before this attempt (see
#: ``flink_jobs.sharded.DecideWindows.replay_horizon``).
RECHECK = "recheck"


class WriteSteps(FlatMapFunction):
    """Writes each step of ``decide: verdicts, windows`` to Cassandra - its verdicts (images, duplicates,
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
    :meth:`flink_jobs.sharded.DecideWindows.replay_horizon`) the stored images row is read first and the rows its old
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
