"""The pipeline's Python operators: thin wiring of :mod:`imgstream` logic to Flink state.

Every stateful decision is made by ``imgstream.dedup``/``windows``; these classes only load
state, call it, store the result and emit. State holds plain lists and dicts (never pickled
classes) so savepoints survive code changes.

Streams between operators carry image dicts: the event's fields plus ``event_time``, its Kafka
coordinates and, once decided, the verdict fields (``status``, ``duplicate_of``, ...).
"""

from __future__ import annotations

from typing import Any, Iterable

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from imgstream.cleaning import Cleaned, DeadLetter, Heartbeat, Source, clean
from imgstream.dedup import DedupPolicy, Deduplicator, ImageRef, Verdict
from imgstream.hashing import parse_hash
from imgstream.windows import UPLOAD_STATS, Lateness, WindowState, classify, final_at, fires_at, window_start

from flink_jobs.mirror import MirroredMap
from flink_jobs.rows import VERDICT_TYPE, verdict_row

DLQ_TAG = OutputTag("dead-letters", Types.STRING())
REJECTED_TAG = OutputTag("rejected")
VERDICTS_TAG = OutputTag("verdicts", VERDICT_TYPE)

#: Flink state TTL (processing time) is only garbage collection; decisions age by event time.
#: Keep keys a while past their event-time TTL so replays within it still find them.
GC_FACTOR = 2


def _ttl(state: Any, ttl_ms: int) -> Any:
    # ReturnExpiredIfNotCleanedUp + OnCreateAndWrite keeps PyFlink's Python-side state cache
    # on; NeverReturnExpired disables it for every state of the worker, making each read and
    # each write a round trip to the JVM. Decisions ignore expired entries by event time
    # anyway, so seeing one that is not yet collected changes nothing.
    config = (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms * GC_FACTOR))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
        .build()
    )
    state.enable_time_to_live(config)
    return state


def _ref(image: dict[str, Any]) -> ImageRef:
    return ImageRef(image["image_id"], image["producer"], image["sha256"], parse_hash(image["phash"]), image["event_time"])


def with_lateness(image: dict[str, Any], watermark: int, window_ms: int, allowed_lateness_ms: int) -> dict[str, Any]:
    """``image`` with its lateness against ``watermark`` (the watermark when it entered the
    stage that holds it), which travels with the verdict to the window and the sinks."""
    lateness = classify(int(image["event_time"]), watermark, window_ms, allowed_lateness_ms)
    return {**image, "lateness": lateness.value, "watermark": watermark}


# --- cleaning ------------------------------------------------------------------------------


class CleanFunction(ProcessFunction):
    """Raw Kafka rows -> image dicts (main), dead letters (JSON, side) and rejected verdicts (side).

    A rejected verdict skips dedup, so its lateness is classified here, on arrival.
    """

    def __init__(self, window_ms: int, allowed_lateness_ms: int) -> None:
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterable[Any]:
        raw, topic, partition, offset = value[0], value[1], value[2], value[3]
        out = clean(raw, Source(topic, partition, offset, ctx.timestamp()))
        if isinstance(out, Heartbeat):
            return  # it advanced its partition's watermark in the source; nothing to process
        if isinstance(out, Cleaned):
            image = out.event.to_dict()
            image.update(event_time=out.event_time, topic=topic, partition=partition, offset=offset)
            yield image
            return
        assert isinstance(out, DeadLetter)
        yield DLQ_TAG, out.to_json().decode()
        event_time = out.event_time if out.event_time is not None else ctx.timestamp()
        image = {
            "image_id": out.image_id,
            "producer": out.producer,
            "content_type": out.content_type,
            "event_time": event_time,
            "reason": out.reason,
            "error": out.error[:1000],
            "topic": topic,
            "partition": partition,
            "offset": offset,
        }
        watermark = ctx.timer_service().current_watermark()
        image = with_lateness(image, watermark, self.window_ms, self.allowed_lateness_ms)
        yield REJECTED_TAG, {**image, **Verdict.rejected(out.image_id).to_dict()}


# --- dedup: replay drop, exact and near duplicates (one index, decided in event-time order) ---

#: Every image goes to one index: "duplicate" compares each image with every earlier one.
INDEX_KEY = "index"
#: Images wait for the watermark in buckets of this much event time (one timer per bucket,
#: not per image: each timer registration is a round trip from Python to the JVM). It must
#: divide the window length, so an image is decided before its window can fire downstream.
ORDER_BUCKET_MS = 200
#: How often (event time) the index drops entries whose TTL has passed ...
PRUNE_EVERY_MS = 60_000
#: ... judged this far behind the watermark, so late images still see what they could match.
PRUNE_SLACK_MS = 24 * 3600 * 1000


def _pending_key(image: dict[str, Any]) -> str:
    """Sorts as ``(event_time, image_id)``, the decision order; unique per Kafka record."""
    return f"{int(image['event_time']):015d}|{image['image_id']}|{image['partition']}|{image['offset']}"


class DedupIndex(KeyedProcessFunction):
    """Decides every image with one :class:`~imgstream.dedup.Deduplicator` over keyed state.

    Keyed by :data:`INDEX_KEY`. An image ahead of the watermark waits in ``pending`` until the
    watermark passes its bucket, then images are decided in ``(event_time, image_id)`` order,
    which a replay after a failure reproduces; an image already behind the watermark (late) is
    decided on arrival. Its lateness is classified here, on arrival, and travels with the verdict.

    The dedup state (replay marks, first image per SHA-256, band candidates) and the pending
    buffer are ``MapState`` mirrored in memory (:class:`~flink_jobs.mirror.MirroredMap`), so a
    decision costs no round trip to the JVM.
    """

    def __init__(self, policy: DedupPolicy, window_ms: int, allowed_lateness_ms: int) -> None:
        if window_ms % ORDER_BUCKET_MS:
            raise ValueError(f"window_ms must be a multiple of {ORDER_BUCKET_MS}, got {window_ms}")
        self.policy = policy
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms

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
        self.mirrors = (self.pending, replays, exact, bands)
        self.dedup = Deduplicator(policy, replays=replays, exact=exact, bands=bands)
        self.key: Any = None
        self.timers: set[int] = set()  # registered in this attempt (re-registering is harmless)
        self.pruned_at: int | None = None

    def _use_key(self, key: Any) -> None:
        if key != self.key:
            for mirror in self.mirrors:
                mirror.reset()
            self.key = key

    def process_element(self, image: dict[str, Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        self._use_key(ctx.get_current_key())
        watermark = ctx.timer_service().current_watermark()
        ts = int(image["event_time"])
        image = with_lateness(image, watermark, self.window_ms, self.allowed_lateness_ms)
        if ts <= watermark:
            yield from self._decide([image])
            return
        self.pending[_pending_key(image)] = image
        due = ts - ts % ORDER_BUCKET_MS + ORDER_BUCKET_MS - 1
        if due not in self.timers:
            ctx.timer_service().register_event_time_timer(due)
            self.timers.add(due)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        self._use_key(ctx.get_current_key())
        self.timers.discard(timestamp)
        due = sorted(key for key in self.pending if int(key[:15]) <= timestamp)
        images = [self.pending[key] for key in due]
        for key in due:
            del self.pending[key]
        yield from self._decide(images)
        if self.pruned_at is None or timestamp - self.pruned_at >= PRUNE_EVERY_MS:
            self.dedup.prune(timestamp - PRUNE_SLACK_MS)
            self.pruned_at = timestamp

    def _decide(self, images: list[dict[str, Any]]) -> Iterable[Any]:
        for image in images:
            verdict = self.dedup.process(_ref(image))
            if verdict is not None:  # None: a replay, dropped
                yield {**image, **verdict.to_dict()}


# --- windowed statistics (keyed by window_start|producer|content_type) ----------------------


def window_key(verdict: dict[str, Any], window_ms: int) -> str:
    """Key of the window-stats operator: one window of one (producer, content type)."""
    return f"{window_start(int(verdict['event_time']), window_ms)}|{verdict['producer']}|{verdict['content_type']}"


class WindowStats(KeyedProcessFunction):
    """Owns one window of one group: counts its verdicts, decides lateness, emits versions.

    Lateness comes with the verdict (see :func:`with_lateness`: classified by the dedup index,
    or by cleaning for rejected events, on arrival; watermarks only grow downstream, so an
    event on time there is on time here). It agrees with this operator's windows: an on-time image is decided
    when the watermark passes its bucket, which ends no later than its window, so it arrives
    here before the watermark that fires the window. (A SQL window would drop late rows
    silently, by its own watermark.) Main output: versions of the window row (dicts).
    Side output ``VERDICTS_TAG``: every verdict as a typed row with its ``lateness``, for the
    images/duplicates/late_events writes.
    """

    def __init__(self, window_ms: int, allowed_lateness_ms: int) -> None:
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        # one value per key: [producer, content_type, window state as list]
        self.state = runtime_context.get_state(ValueStateDescriptor("window", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, verdict: dict[str, Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        watermark = ctx.timer_service().current_watermark()
        event_time = int(verdict["event_time"])
        lateness = Lateness(verdict["lateness"])
        yield VERDICTS_TAG, verdict_row(verdict)
        if lateness is Lateness.TOO_LATE:
            return  # listed in late_events by the sink; a final row never changes
        stored = self.state.value()
        if stored is None:
            start = window_start(event_time, self.window_ms)
            group = (verdict["producer"], verdict["content_type"])
            state = WindowState.open(start, start + self.window_ms)
            ctx.timer_service().register_event_time_timer(fires_at(state.end))
            ctx.timer_service().register_event_time_timer(final_at(state.end, self.allowed_lateness_ms))
        else:
            group, state = (stored[0], stored[1]), WindowState.from_list(stored[2])
        partial = UPLOAD_STATS.add(UPLOAD_STATS.create(), verdict)
        if watermark >= fires_at(state.end):  # the window has fired (or its timer is due): a new version
            state = (state if state.fired else state.fire()).add_late(partial)
            self.state.update([*group, state.to_list()])
            yield _window_row(group, state)
        else:
            self.state.update([*group, state.add(partial).to_list()])

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        stored = self.state.value()
        if stored is None:
            return
        group, state = (stored[0], stored[1]), WindowState.from_list(stored[2])
        final = state.on_watermark(timestamp, self.allowed_lateness_ms)
        if final is not None:
            self.state.clear()
            yield _window_row(group, final)
            return
        if not state.fired and timestamp >= fires_at(state.end):
            state = state.fire()
            self.state.update([*group, state.to_list()])
            yield _window_row(group, state)


def _window_row(group: tuple[str, str], state: WindowState) -> dict[str, Any]:
    row = state.result()
    row.update(producer=group[0], content_type=group[1])
    return row
