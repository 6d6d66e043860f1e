"""The deciding operators of the sharded pipeline (issue 17): dedup and windows at any parallelism.

Three keyed operators, each keyed by a *shard* (an ``int``, :class:`~imgstream.domain.sharding.ShardPlan`),
so each subtask holds the state of its shards only - ``1/N`` of the index at parallelism ``N``::

    source (raw records keyed in the JVM by their SHA-256's shard)
      -> [exact shard]  batch: per shard and watermark (JVM)
      -> [exact shard]  clean, decide: exact    cleaning, replay drop + exact dedup
               |  exact duplicates, rejected events, and images that need the near index
               |  '--> near ops (side output, typed rows): the image's hash, to each near shard it visits
               |        -> [near shard] decide: near (JVM)   its keys: probe + register, best match
               v                 |  matches (only when one is found)
          [window shard] decide: verdicts, windows   <-'
               the best match per image -> verdict; windows of (producer, window) shards;
               one step per key and watermark advance -> cassandra: write steps

**Order.** Every stage holds what it receives in ``pending`` until the watermark passes its
200 ms bucket, then takes the whole due buckets sorted by order key
(:func:`~imgstream.domain.sharding.order_key`, set once by ``decide: exact`` on arrival). A stage
forwards a watermark only after the timers it fires, so when a stage sees watermark ``W``, every
item of a bucket ending at or before ``W`` has reached it: each key applies its operations in
decision order, and the verdicts equal the single index's (``imgstream.domain.sharding``).

**Batches.** Past ``decide: exact``'s input, records are batches: each step of a stage (one key,
one watermark advance) sends each key of the next stage one ``Row(shard, [source, items])``,
keyed in the JVM by its first field, so the hops cost a round trip per step and key pair, not
per image; an image and its matches meet in the verdict stage's ``pending`` under one key.

**One crossing per batch of records.** The records reach Python once: ``decide: exact`` cleans
them itself (:class:`~flink_jobs.functions.Cleaner`), keyed and batched per shard and watermark
in the JVM (:func:`flink_jobs.pipeline.exact_shard_sql`, :func:`flink_jobs.pipeline.batched`).
``decide: near`` runs in the JVM (``flink_jobs.near_index``); :class:`DecideNear` is the same stage
in Python (``--near_stage=python``). Python state is ``MapState`` mirrored per key (``MirroredMap.use``).
"""

from __future__ import annotations

import asyncio
import logging
from operator import itemgetter
from typing import Any, Iterable

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from imgstream.adapters.kafka import end_offsets
from imgstream.config import KafkaConfig
from imgstream.domain.dedup import NEEDS_NEAR, STATUS_REJECTED, DedupPolicy, Deduplicator, ImageRef, NearMatch, best_match, near_verdict
from imgstream.domain.events import TOPIC_UPLOADED, ImageUploaded
from imgstream.domain.producers import USER_REALM, dedup_realm
from imgstream.domain.sharding import ORDER_BUCKET_MS, ShardPlan, bucket_end, bucket_limit, due_of, order_key, pending_key
from imgstream.domain.windows import Lateness, WindowBook, coalesce, window_start

from flink_jobs.cassandra_sink import maybe_written
from flink_jobs import worker_gc
from flink_jobs.functions import BAND_KEYS, PRUNE_EVERY_MS, PRUNE_SLACK_MS, RECHECK, Cleaner, _ref, _ttl, with_lateness
from flink_jobs.mirror import KeyCodec, MirroredMap
# each stage keeps one index per dedup realm: a synthetic image is never a user upload's original (issue 20)
from flink_jobs.near_index import NEAR_OPS_TYPE, REALMS, near_op, op_item

log = logging.getLogger(__name__)
_first = itemgetter(0)

#: What the stages send each other: ``Row(shard, [source, items])``, keyed in the JVM by the
#: shard (``flink_jobs.pipeline.by_first_field``): no Python function runs to find the key.
BATCH_TYPE = Types.ROW([Types.INT(), Types.PICKLED_BYTE_ARRAY()])
#: ``decide: exact``'s side output: a step's near ops (typed rows), sent on to their near shards in the JVM.
NEAR_TAG = OutputTag("near-ops", NEAR_OPS_TYPE)
#: Entry of ``decide: exact``'s ``layout`` state: the :attr:`ShardPlan.signature` its state was written by.
LAYOUT = "plan"
#: Field of an image that waits for its near matches in ``decide: verdicts, windows``.
NEEDS_NEAR_FIELD = "needs_near"


def realm_state(name: str, realm: str) -> str:
    """The state name of index ``name`` in ``realm`` (the user realm keeps the plain name)."""
    return name if realm == USER_REALM else f"{name}-{realm}"


def batches(items: Iterable[tuple[int, Any]], source: str) -> list[Row]:
    """``(shard, item)`` pairs as one ``Row(shard, [source, [items...]])`` per shard (:data:`BATCH_TYPE`),
    items kept in their order: what one step of a stage sends to each key of the next."""
    grouped: dict[int, list[Any]] = {}
    for shard, item in items:
        grouped.setdefault(shard, []).append(item)
    return [Row(shard, [source, group]) for shard, group in grouped.items()]


def merge(parts: Iterable[list[Any]]) -> tuple[str, list[Any]]:
    """Batches ``[source, items]`` of one upstream subtask's step for one key as one: all items,
    sorted, under the first batch's source (``first#source`` stays unique: a source belongs to
    one subtask, and an item reaches a key once)."""
    parts = list(parts)
    return parts[0][0], parts[0][1] if len(parts) == 1 else sorted((i for _, part in parts for i in part), key=_first)


class OrderedStage(KeyedProcessFunction):
    """Holds items until the watermark passes their bucket, then hands whole due buckets to
    :meth:`step` in order-key order; state per key (shard), mirrored per key.

    Items are ``(pending key, payload)`` tuples and arrive in *batches*: a stage's step sends
    each key of the next stage one record with all its items of that step (sorted), and the
    next stage holds it as one ``pending`` entry, under its first item's key and its source
    (``first#source``: unique, and due with its first item). Taking due items splits a batch
    at the limit and holds the rest again. One record and one state entry per step and key
    pair instead of one per item: each record between Python operators is a JVM round trip
    with its own pickling, and each state entry a write and a delete."""

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_gc.install(runtime_context)
        self.runtime = runtime_context
        self.mirrors: list[MirroredMap] = []
        self.pending = self.mirrored("pending")
        self.key: Any = None
        self.timers: set[tuple[Any, int]] = set()  # registered in this attempt
        self.due_timer: dict[Any, int] = {}  # per key: the earliest timer registered for pending items
        self.decided_to: dict[Any, int] = {}  # per key: nothing pending is due at or before it
        self.pruned_at: dict[Any, int] = {}
        self.met: set[Any] = set()  # keys met in this attempt
        metrics = runtime_context.get_metrics_group()
        # per subtask, in the web UI (and REST): how much each step and batch carries
        self.batches_in = metrics.counter("batchesIn")
        self.items_in = metrics.counter("itemsIn")
        self.steps = metrics.counter("steps")
        self.setup(runtime_context)

    def setup(self, runtime_context: RuntimeContext) -> None:
        """Subclasses open their state here."""

    def mirrored(self, name: str, ttl_ms: int = 0, keys: KeyCodec | None = None) -> MirroredMap:
        descriptor = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        if ttl_ms:
            _ttl(descriptor, ttl_ms)
        mirror = MirroredMap(self.runtime.get_map_state(descriptor), keys)
        self.mirrors.append(mirror)
        return mirror

    def use_key(self, key: Any) -> None:
        if key != self.key:
            for mirror in self.mirrors:
                mirror.use(key)
            self.key = key
            self.switched(key)
            if key not in self.met:
                self.met.add(key)
                self.first_touch(key)

    def switched(self, key: Any) -> None:
        """Called when the current key changes (subclasses reset per-key caches)."""

    def first_touch(self, key: Any) -> None:
        """Called once per key and attempt, after :meth:`switched`: state found under it now
        was restored (subclasses check it)."""

    def hold(self, items: list[Any], source: str, ctx: Any) -> None:
        """Keep ``items`` (sorted ``(pk, payload)`` tuples from ``source``) until they are due."""
        if not items:
            return
        first = items[0][0]
        self.pending[first if not source else f"{first}#{source}"] = items
        self.wake(ctx, bucket_end(due_of(first)))
        decided = self.decided_to.get(self.key)
        if decided is not None and due_of(first) <= decided:
            del self.decided_to[self.key]  # an item behind the last step (after a restore)

    def wake(self, ctx: Any, at: int) -> None:
        """Have a timer fire for the current key at or before ``at``. One timer per key waits
        for its pending items (the earliest bucket end), not one per bucket: a registration is
        a record to the JVM and a firing one back, and a key meets items of many buckets. The
        firing takes every due bucket and registers the next (:meth:`on_timer`), unless a timer
        this attempt registered comes earlier. After a restore the checkpointed timers cover
        the restored items, and this attempt knows nothing of them: its first hold per key
        registers again (harmless), and each firing re-checks the next bucket's timer."""
        current = self.due_timer.get(self.key)
        if current is None or at < current:
            self.timer(ctx, at)
            self.due_timer[self.key] = at

    def timer(self, ctx: Any, timestamp: int) -> None:
        if (self.key, timestamp) not in self.timers:
            ctx.timer_service().register_event_time_timer(timestamp)
            self.timers.add((self.key, timestamp))

    def take_due(self, watermark: int, ctx: Any) -> list[Any]:
        """Pending items of the whole buckets at or before ``watermark``, in order, removed
        (the rest of a batch that reaches past them is held again)."""
        limit = bucket_limit(watermark)
        decided = self.decided_to.get(self.key)
        if decided is not None and limit <= decided:
            return []
        taken: list[Any] = []
        rests = []
        for key in [key for key in self.pending if due_of(key) <= limit]:
            items = self.pending[key]
            del self.pending[key]
            cut = len(items)
            while due_of(items[cut - 1][0]) > limit:
                cut -= 1
            taken.extend(items[:cut])
            if cut < len(items):
                rests.append((items[cut:], key.partition("#")[2]))
        self.decided_to[self.key] = limit
        for rest, source in rests:
            self.hold(rest, source, ctx)
        taken.sort(key=_first)
        return taken

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        self.use_key(ctx.get_current_key())
        self.timers.discard((self.key, timestamp))
        if self.due_timer.get(self.key) == timestamp:
            del self.due_timer[self.key]
        watermark = max(timestamp, ctx.timer_service().current_watermark())
        due = self.take_due(watermark, ctx)
        if due:
            self.steps.inc()
        yield from self.step(due, timestamp, ctx)
        if len(self.pending):
            # the next bucket needs a timer no later than its end. ``due_timer`` knows only this
            # attempt's registrations: after a restore the timer firing now may be a restored
            # one, earlier than the one ``due_timer`` holds (a new item's, of a later bucket),
            # and skipping the wake would leave the next bucket waiting for that later timer -
            # decided after other shards' images it precedes. ``wake`` registers only if earlier.
            self.wake(ctx, bucket_end(min(due_of(key) for key in self.pending)))
        last = self.pruned_at.get(self.key)
        if last is None or timestamp - last >= PRUNE_EVERY_MS:
            self.prune(timestamp - PRUNE_SLACK_MS)
            self.pruned_at[self.key] = timestamp

    def process_element(self, batch: list[Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        """The batches of a stage before for this key (its shard, the key, came as the row's first
        field: :func:`batches`): one ``[source, items]``, or - merged in the JVM per subtask and
        watermark (:func:`flink_jobs.pipeline.merged`) - a list of ``([source, items], timestamp)``,
        held as one ``pending`` entry (see :func:`merge`)."""
        self.use_key(ctx.get_current_key())
        source, items = batch if isinstance(batch[0], str) else merge(part for part, _ in batch)
        self.counted(items)
        self.hold(items, source, ctx)
        return ()

    def counted(self, items: list[Any]) -> None:
        self.batches_in.inc()
        self.items_in.inc(len(items))

    def step(self, items: list[Any], timestamp: int, ctx: Any) -> Iterable[Any]:
        raise NotImplementedError

    def prune(self, now: int) -> None:
        """Drop state no image at event time ``now`` or later can use."""


class DecideExact(OrderedStage):
    """``clean, decide: exact``: cleans each raw record (:class:`~flink_jobs.functions.Cleaner`;
    dead letters leave on :data:`~flink_jobs.functions.DLQ_TAG`) and positions each event in decision order on arrival (its order key and
    lateness against this subtask's watermark), then decides replay drop and exact dedup per
    SHA-256 shard. Exact duplicates and rejected events go on as verdicts; an image that needs
    the near index goes on marked :data:`NEEDS_NEAR_FIELD`, and one op per near shard it
    visits leaves on :data:`NEAR_TAG`."""

    def __init__(self, policy: DedupPolicy, plan: ShardPlan, window_ms: int, allowed_lateness_ms: int,
                 cleaner: Cleaner | None = None) -> None:  # fmt: skip
        if window_ms % ORDER_BUCKET_MS or allowed_lateness_ms % ORDER_BUCKET_MS:
            # every window deadline a bucket end: a window never fires mid-bucket, images of it in flight
            raise ValueError(f"window_ms and allowed_lateness_ms must be multiples of {ORDER_BUCKET_MS}")
        self.policy = policy
        self.plan = plan
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.cleaner = cleaner or Cleaner(TOPIC_UPLOADED)

    def setup(self, runtime_context: RuntimeContext) -> None:
        self.cleaner.open(runtime_context)
        policy = self.policy
        self.dedups = {
            realm: Deduplicator(policy, replays=self.mirrored(realm_state("replays", realm), policy.replay_ttl_ms),
                                exact=self.mirrored(realm_state("exact", realm), policy.exact_ttl_ms), bands={})
            for realm in REALMS
        }  # fmt: skip
        self.layout = self.mirrored("layout")

    def first_touch(self, key: Any) -> None:
        """The state under ``key`` must be laid out by this plan (``--dedup_shards`` changed on
        a restore fails the job instead of missing duplicates)."""
        self.plan.check_restored(self.layout.get(LAYOUT))
        if LAYOUT not in self.layout:
            self.layout[LAYOUT] = self.plan.signature

    def process_element(self, batch: list[Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        """A batch of raw records ``((value, partition, offset), timestamp)`` of one exact shard
        (the key), as :func:`flink_jobs.pipeline.batched` groups them in the JVM (keyed by
        :func:`flink_jobs.pipeline.exact_shard_sql`): each cleaned here, positioned under the
        watermark it arrived under (the current one: the batch came before the next), and held
        as one ``pending`` entry."""
        self.use_key(ctx.get_current_key())
        self.counted(batch)
        watermark = ctx.timer_service().current_watermark()
        held = []
        misrouted, positioned = self.misrouted, self.positioned
        for (value, partition, offset), timestamp in batch:
            for out in self.cleaner.outputs(value, partition, offset, timestamp, misrouted):
                if isinstance(out, tuple):
                    yield out  # a dead letter (its rejected verdict follows, and is held)
                else:
                    held.append(positioned(out, watermark))
        held.sort(key=_first)
        self.hold(held, "", ctx)

    def misrouted(self, event: ImageUploaded) -> str | None:
        """Why a valid event cannot be decided here: its content belongs to another shard than
        the one the SQL routed it to (None: it belongs here). Only a value that two JSON parsers
        read differently gets here - deciding it would search the wrong part of the index."""
        shard = self.plan.exact_shard(event.sha256)
        if shard == self.key:
            return None
        return (f"sha256 {event.sha256} belongs to exact shard {shard}, but the source routed the record to shard "
                f"{self.key}: its JSON reads differently to the JVM's parser (a key given twice?)")

    def positioned(self, image: dict[str, Any], watermark: int) -> tuple[str, dict[str, Any]]:
        """A cleaned event (or a rejected one) that arrived under ``watermark``, as the
        ``(pending key, image with its lateness)`` item that holds its place in decision order."""
        ts, image_id = int(image["event_time"]), str(image.get("image_id") or "")
        image = with_lateness(image, watermark, self.window_ms, self.allowed_lateness_ms)
        return pending_key(order_key(ts, image_id, watermark), image["partition"], image["offset"]), image

    def step(self, items: list[Any], timestamp: int, ctx: Any) -> Iterable[Any]:
        to_windows: list[tuple[int, Any]] = []
        to_near: list[Row] = []
        for pk, image in items:
            wshard = self.plan.window_shard(str(image.get("producer")), window_start(int(image["event_time"]),
                                            self.window_ms), str(image.get("content_type")))  # fmt: skip
            if image.get("status") == STATUS_REJECTED:  # never meets the index
                to_windows.append((wshard, (pk, image)))
                continue
            ref = _ref(image)
            verdict = self.dedups[dedup_realm(ref.producer)].exact_step(ref)
            if verdict is None:  # a replay, dropped
                continue
            if verdict is NEEDS_NEAR:
                image[NEEDS_NEAR_FIELD] = True
                to_windows.append((wshard, (pk, image)))
                to_near.append(near_op(pk, wshard, ref, self.policy))  # to its near shards: route_near_ops
                continue
            to_windows.append((wshard, (pk, {**image, **verdict.to_dict()})))
        if to_near:
            yield NEAR_TAG, Row(self.key, to_near)
        yield from batches(to_windows, f"e{self.key}")

    def prune(self, now: int) -> None:
        for dedup in self.dedups.values():
            dedup.prune(now)


class DecideNear(OrderedStage):
    """``decide: near``: the band keys of one near shard. Per image (in decision order) the closest
    earlier candidate under the probe keys it owns (``ShardPlan.near_route``), then the image
    registered under its own; per step, one batch of ``(pk, match)`` per window shard of the images
    that found one (none: the verdict stage reads no match as "accepted"). The job runs the same
    stage in the JVM (``dev.imgstream.flink.NearIndex``) unless ``--near_stage=python``."""

    def __init__(self, policy: DedupPolicy, plan: ShardPlan) -> None:
        self.policy = policy
        self.plan = plan

    def setup(self, runtime_context: RuntimeContext) -> None:
        policy = self.policy
        self.dedups = {
            realm: Deduplicator(policy, replays={}, exact={},
                                bands=self.mirrored(realm_state("bands", realm), policy.near_ttl_ms, BAND_KEYS))
            for realm in REALMS
        }  # fmt: skip

    def first_touch(self, key: Any) -> None:
        plan = self.policy.band_plan
        foreign = sum(1 for dedup in self.dedups.values() for k in dedup.bands if not plan.owns(k))
        if foreign:  # near shards own band keys by layout: other bands need a fresh index
            log.warning("near shard %r holds %d band keys of another layout (near_bands changed?): they are "
                        "not searched; start the job on fresh state (make flink-reset)", key, foreign)
        for entry, ops in list(self.pending.items()):  # restored ops held since before band keys were ints
            if any(type(k) is str for op in ops if len(op) > 6 for k in op[6]):
                self.pending[entry] = [(*op[:6], *([*map(BAND_KEYS.parse, keys)] for keys in op[6:])) for op in ops]

    def process_element(self, batch: list[Any], ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        """One exact shard's step of near ops (typed rows), held as one ``pending`` entry: its first
        key is unique (an image reaches a near shard once), so it needs no source."""
        self.use_key(ctx.get_current_key())
        items = [op_item(op) for op in batch]
        self.counted(items)
        self.hold(items, "", ctx)
        return ()

    def step(self, items: list[Any], timestamp: int, ctx: Any) -> Iterable[Any]:
        matches, route = [], self.plan.near_route
        for pk, wshard, image_id, producer, phash, event_time, *keys in items:
            ref = ImageRef(image_id, producer, "", phash, event_time)
            probe_keys, register_keys = keys or route(self.key, phash)  # ops held since before 2026-12-06: keys
            match = self.dedups[dedup_realm(producer)].near_step(ref, probe_keys, register_keys)
            if match is not None:
                matches.append((wshard, (pk, match.to_list())))
        source = f"n{self.key}"
        yield from batches(matches, source)

    def prune(self, now: int) -> None:
        for dedup in self.dedups.values():
            dedup.prune(now)


class DecideWindows(OrderedStage):
    """``decide: verdicts, windows``: per window shard ((producer, window start) pairs), the
    verdict of each image that needed the near index (the best of its shards' matches), then
    the upload-stats windows (:class:`WindowBook`) exactly as the single-index operator before issue 17
    counted them: lateness from ``decide: exact``'s arrival watermark, never below the shard's
    finalised-through point (kept in ``progress``: a restore starts without a watermark); the
    window versions of a step coalesced (one row per window and step). One record per step:
    ``{"verdicts": [...], "windows": [...]}``, which ``WriteSteps`` writes.

    **Replays.** On restored state (or with ``recheck_all``) the upload topic's end offsets
    are read once; verdicts of events below them are tagged ``recheck`` (see :meth:`replay_horizon`).
    """

    def __init__(self, window_ms: int, allowed_lateness_ms: int, kafka: KafkaConfig | None = None,
                 topic: str = "", recheck_all: bool = False) -> None:  # fmt: skip
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.kafka = kafka
        self.topic = topic
        self.recheck_all = recheck_all

    def setup(self, runtime_context: RuntimeContext) -> None:
        windows = self.mirrored("windows")
        progress = self.mirrored("progress")
        self.book = WindowBook(self.window_ms, self.allowed_lateness_ms, windows, progress)
        self.horizon: dict[int, int] | None = None
        attempt = getattr(runtime_context, "get_attempt_number", lambda: 0)()
        self.restarted = bool(attempt)  # a failover: this attempt replays what the last one may have written

    def switched(self, key: Any) -> None:
        self.book.reset()

    def first_touch(self, key: Any) -> None:
        # state found under a key at its first touch in this attempt was restored (a key met
        # again later holds what this attempt wrote: no reason to re-check anything)
        if self.horizon is None:
            restored = self.restarted or any(len(mirror) for mirror in self.mirrors)
            if restored or self.recheck_all:
                self.horizon = self.replay_horizon()

    def replay_horizon(self) -> dict[int, int]:
        """Upload-topic offsets below which an event may already have been decided and written
        by an earlier attempt: the end offsets now, read when this task meets restored state (or
        with ``recheck_all``, after ``make flink-reset``). Verdicts below them are tagged
        ``recheck``, so the writer removes rows a different earlier verdict left (issue 16); a
        fresh job's verdicts need no look-up."""
        if self.kafka is None or not self.topic:
            return {}
        horizon = asyncio.run(end_offsets(self.kafka, self.topic))
        log.info("events of %s below offsets %s may be replays: their earlier rows are checked", self.topic, horizon)
        return horizon

    def step(self, items: list[Any], timestamp: int, ctx: Any) -> Iterable[Any]:
        # an image and its near shards' matches share a pending key, so one step holds them all
        best: dict[str, NearMatch | None] = {}
        for pk, payload in items:
            if not isinstance(payload, dict):
                best[pk] = best_match(best.get(pk), NearMatch.from_list(payload))
        verdicts = []
        for pk, image in items:
            if not isinstance(image, dict):
                continue
            if image.pop(NEEDS_NEAR_FIELD, False):
                image.update(near_verdict(_ref(image), best.get(pk)).to_dict())
            if self.horizon and maybe_written(image, self.topic, self.horizon):
                image[RECHECK] = True
            verdicts.append(image)
        windows = []
        for verdict in verdicts:
            # lateness as decide: exact saw it on arrival, never below this shard's finalised point
            arrived_at = self.book.effective_watermark(int(verdict["watermark"]))
            lateness = self.book.classify(int(verdict["event_time"]), arrived_at)
            verdict.update(lateness=lateness.value, watermark=arrived_at)
            version = self.book.add(verdict, lateness, arrived_at)
            if version is not None:
                windows.append(version)
            if lateness is not Lateness.TOO_LATE:
                for deadline in self.book.deadlines(int(verdict["event_time"])):
                    if deadline > arrived_at:
                        self.timer(ctx, deadline)
        windows.extend(self.book.advance(timestamp))
        self.book.flush()
        if verdicts or windows:
            yield {"verdicts": verdicts, "windows": coalesce(windows)}
