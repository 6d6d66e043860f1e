"""The pipeline's Python operators: thin wiring of :mod:`imgstream` logic to Flink state.

Every stateful decision is made by a pure function from ``imgstream.dedup``/``windows``;
these classes only load state, call it, store the result and emit. State holds plain lists
and dicts (never pickled classes) so savepoints survive code changes.

Messages between the dedup operators (pickled tuples):

* ``("verdict", image, verdict)`` - a final verdict (exact duplicate, near opt-out, rejected);
* ``("pending", image, bands)`` - the image waits for ``bands`` band results;
* ``("band", image_id, match)`` - one band's closest earlier match (``None`` = none).

``image`` is a dict with the event's fields plus ``event_time`` and its Kafka coordinates.
"""

from __future__ import annotations

from typing import Any, Iterable

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from imgstream.cleaning import Cleaned, DeadLetter, Heartbeat, Source, clean
from imgstream.dedup import (
    BandMerge,
    DedupPolicy,
    ImageRef,
    NearMatch,
    Seen,
    Verdict,
    exact_decision,
    near_match,
    register_candidate,
    replay_decision,
)
from imgstream.hashing import band_keys, parse_hash
from imgstream.windows import UPLOAD_STATS, Lateness, WindowState, classify, final_at, fires_at, window_start

from flink_jobs.rows import VERDICT_TYPE, verdict_row

DLQ_TAG = OutputTag("dead-letters", Types.STRING())
REJECTED_TAG = OutputTag("rejected")
BANDS_TAG = OutputTag("bands")
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


# --- cleaning ------------------------------------------------------------------------------


class CleanFunction(ProcessFunction):
    """Raw Kafka rows -> image dicts (main), dead letters (JSON, side) and rejected verdicts (side)."""

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
        yield REJECTED_TAG, ("verdict", image, Verdict.rejected(out.image_id).to_dict())


# --- replay drop (keyed by image_id) -------------------------------------------------------


class ReplayFilter(KeyedProcessFunction):
    """Drops an ``image_id`` seen before (within the replay TTL); the first sighting passes."""

    def __init__(self, policy: DedupPolicy) -> None:
        self.policy = policy

    def open(self, runtime_context: RuntimeContext) -> None:
        descriptor = _ttl(ValueStateDescriptor("first_seen", Types.LONG()), self.policy.replay_ttl_ms)
        self.first_seen = runtime_context.get_state(descriptor)

    def process_element(self, image: dict[str, Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        replay, mark = replay_decision(self.first_seen.value(), _ref(image), self.policy.replay_ttl_ms)
        self.first_seen.update(mark)
        if not replay:
            yield image


# --- event-time ordering -------------------------------------------------------------------


class EventTimeOrdered(KeyedProcessFunction):
    """Decides a key's elements in event-time order, once the watermark has passed them.

    Arrival order across Kafka partitions is not reproducible after a failure; the watermark
    order is. Elements already behind the watermark (late) are decided on arrival.

    Each key keeps ONE value state (a dict: the pending ``buffer`` plus the subclass's own
    fields), read once and written once per callback: every keyed-state access from Python is
    a round trip to the JVM, and most keys here (hashes, bands) are new, so not cached.
    Subclasses implement ``event_time``, ``order`` and ``decide(value, data)``, which may
    mutate ``data``.
    """

    ttl_ms: int = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        descriptor = ValueStateDescriptor("state", Types.PICKLED_BYTE_ARRAY())
        if self.ttl_ms:
            _ttl(descriptor, self.ttl_ms)
        self.state = runtime_context.get_state(descriptor)

    def event_time(self, value: Any) -> int:
        raise NotImplementedError

    def order(self, value: Any) -> Any:
        raise NotImplementedError

    def decide(self, value: Any, data: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        data = self.state.value() or {}
        ts = self.event_time(value)
        if ts <= ctx.timer_service().current_watermark():
            out = self.decide(value, data)
        else:
            data.setdefault("buffer", {}).setdefault(ts, []).append(value)
            ctx.timer_service().register_event_time_timer(ts)
            out = []
        self.state.update(data)
        yield from out

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        data = self.state.value()
        if not data:
            return
        pending = data.get("buffer", {}).pop(timestamp, None)
        if pending is None:
            return
        if not data["buffer"]:
            del data["buffer"]
        out: list[Any] = []
        for value in sorted(pending, key=self.order):
            out.extend(self.decide(value, data))
        self.state.update(data)
        yield from out


# --- exact dedup (keyed by sha256) ---------------------------------------------------------


class ExactDedup(EventTimeOrdered):
    """First image per SHA-256 (global and per producer); fans the rest out to the bands.

    State: ``first`` (the first image with this content) and ``own`` (producer -> its first).
    """

    def __init__(self, policy: DedupPolicy) -> None:
        self.policy = policy
        self.ttl_ms = policy.exact_ttl_ms

    def event_time(self, image: dict[str, Any]) -> int:
        return int(image["event_time"])

    def order(self, image: dict[str, Any]) -> Any:
        return (image["event_time"], image["image_id"])

    def decide(self, image: dict[str, Any], data: dict[str, Any]) -> list[Any]:
        ref = _ref(image)
        producer_policy = self.policy.for_producer(ref.producer)
        own: dict[str, list[Any]] = data.setdefault("own", {})
        stored_global = data.get("first")
        stored_own = own.get(ref.producer)
        decision = exact_decision(
            ref,
            producer_policy.scope,
            None if stored_global is None else Seen.from_list(stored_global),
            None if stored_own is None else Seen.from_list(stored_own),
            self.policy.exact_ttl_ms,
        )
        data["first"] = decision.first_global.to_list()
        own[ref.producer] = decision.first_own.to_list()
        if decision.original is not None:
            return [("verdict", image, Verdict.exact(ref.image_id, decision.original.image_id).to_dict())]
        seen = [ref.image_id, ref.producer, ref.event_time, ref.phash]
        keys = band_keys(ref.phash, self.policy.near_max_distance)
        out: list[Any] = []
        if producer_policy.near:
            out.append(("pending", image, len(keys)))
        else:
            out.append(("verdict", image, Verdict.accepted(ref.image_id).to_dict()))
        out.extend((BANDS_TAG, (key, seen, not producer_policy.near)) for key in keys)
        return out


# --- near dedup (keyed by band key) --------------------------------------------------------


class NearBand(EventTimeOrdered):
    """Closest earlier candidate sharing this band; then registers the image as a candidate.

    State: ``candidates`` (lists ``[image_id, producer, event_time, phash]``).
    """

    def __init__(self, policy: DedupPolicy) -> None:
        self.policy = policy
        self.ttl_ms = policy.near_ttl_ms

    def event_time(self, message: tuple[str, list[Any], bool]) -> int:
        return int(message[1][2])

    def order(self, message: tuple[str, list[Any], bool]) -> Any:
        return (message[1][2], message[1][0])

    def decide(self, message: tuple[str, list[Any], bool], data: dict[str, Any]) -> list[Any]:
        _, seen, register_only = message
        image_id, producer, event_time, phash = seen
        ref = ImageRef(image_id, producer, "", phash, event_time)
        candidates = [Seen.from_list(c) for c in data.get("candidates", [])]
        out: list[Any] = []
        if not register_only:
            scope = self.policy.for_producer(producer).scope
            match = near_match(ref, candidates, scope, self.policy.near_max_distance)
            out.append(("band", image_id, None if match is None else match.to_list()))
        kept = register_candidate(
            candidates, ref, ttl_ms=self.policy.near_ttl_ms, cap=self.policy.max_band_candidates
        )
        data["candidates"] = [c.to_list() for c in kept]
        return out


# --- merge into one verdict per image (keyed by image_id) ----------------------------------


class MergeVerdicts(KeyedProcessFunction):
    """Collects an image's band results (or takes its final verdict) and emits one verdict:
    the image dict updated with ``status``, ``duplicate_of``, ``duplicate_kind``, ``distance``.

    State (one value): ``[image or None, bands expected or None, results received, best match]``.
    """

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("merge", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, message: tuple[Any, ...], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        kind = message[0]
        if kind == "verdict":
            yield {**message[1], **message[2]}
            return
        image, expected, received, best = self.state.value() or [None, None, 0, None]
        merge = BandMerge(received, NearMatch.from_list(best))
        if kind == "pending":
            image, expected = message[1], message[2]
        else:  # "band"
            merge = merge.add(NearMatch.from_list(message[2]))
        if image is not None and merge.complete(expected):
            self.state.clear()
            yield {**image, **merge.verdict(image["image_id"]).to_dict()}
        else:
            self.state.update([image, expected, merge.received, None if merge.best is None else merge.best.to_list()])


# --- windowed statistics (keyed by window_start|producer|content_type) ----------------------


def window_key(verdict: dict[str, Any], window_ms: int) -> str:
    """Key of the window-stats operator: one window of one (producer, content type)."""
    return f"{window_start(int(verdict['event_time']), window_ms)}|{verdict['producer']}|{verdict['content_type']}"


class WindowStats(KeyedProcessFunction):
    """Owns one window of one group: counts its verdicts, decides lateness, emits versions.

    This one operator classifies every verdict against *its own* watermark and holds the
    window, so "late" and "final" can never disagree (a SQL window upstream would drop late
    rows silently, by its own watermark). Main output: versions of the window row (dicts).
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
        lateness = classify(event_time, watermark, self.window_ms, self.allowed_lateness_ms)
        yield VERDICTS_TAG, verdict_row({**verdict, "lateness": lateness.value, "watermark": watermark})
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
