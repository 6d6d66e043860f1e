"""Typed, frozen configuration of the Flink jobs, read once at the entry point.

Values come from the environment (``IMGSTREAM_*``; the stack writes them into ``.stack/env``)
and may be overridden by ``--key=value`` arguments (``--checkpoint-interval-ms=5000``). Both are
read by the library's :class:`~imgstream.config.ConfigReader`, typed by each field's annotation
(``bool``, ``int``, ``str``, or a comma-separated ``tuple[str, ...]``).
"""

from __future__ import annotations

import os
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, get_type_hints

from imgstream.config import CassandraConfig, ConfigReader, KafkaConfig
from imgstream.domain.dedup import (
    DEFAULT_EXACT_TTL_MS,
    DEFAULT_NEAR_MAX_DISTANCE,
    DEFAULT_NEAR_TTL_MS,
    DEFAULT_REPLAY_TTL_MS,
    MAX_BAND_CANDIDATES,
    DedupPolicy,
)
from imgstream.domain.clock import CLOCK_SKEW_TOLERANCE_MS
from imgstream.domain.sharding import DEFAULT_NEAR_SPLIT_BITS, DEFAULT_SHARDS, ORDER_BUCKET_MS, ShardPlan
from imgstream.domain.events import TOPIC_DEAD_LETTER, TOPIC_DELETED, TOPIC_UPLOADED
from imgstream.domain.windows import MINUTE_MS

from flink_jobs.worker_gc import FULL_EVERY_S, YOUNG_EVERY_S, GcSchedule

#: The Kafka connector jar (a shaded fat jar) matching apache-flink 2.2.x.
KAFKA_CONNECTOR_JAR = "flink-sql-connector-kafka-5.0.0-2.2.jar"
#: The job's own JVM operators, compiled from local-stack/jvm/flink/src (``make jars``).
OPS_JAR = "imgstream-flink-ops.jar"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline job needs; ``from_env`` is called once in ``main``."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    #: Job name in the web UI; also the Kafka transactional-id prefix, so it must be unique
    #: among running jobs (two jobs sharing a prefix fence each other's transactions).
    job_name: str = "imgstream-pipeline"
    topic: str = TOPIC_UPLOADED
    dlq_topic: str = TOPIC_DEAD_LETTER
    #: Deletions (``image.deleted``) the job applies to Cassandra; "" = no deletion branch.
    deleted_topic: str = TOPIC_DELETED
    group_id: str = "imgstream-pipeline"
    #: ``earliest`` on first start; afterwards offsets come from checkpoints/savepoints.
    startup_mode: str = "group-offsets"
    #: ``exactly_once`` (transactional; readers use read_committed) or ``at_least_once``.
    dlq_delivery: str = "exactly_once"
    #: Subtasks of every operator; ``decide``'s stages hold ``1/parallelism`` of the state each.
    #: 1 here (tests and benches submit their own jobs beside the stack's); ``make up`` passes
    #: ``flink_jobs.submit.STACK_PARALLELISM`` (2: two slot groups x 2 of the TaskManager's 6 slots).
    parallelism: int = 1
    #: Key groups of every keyed operator: the most subtasks a savepoint can be restored to. It
    #: must never change for a job's state; 120 (as k8s/base/flink-pipeline) has every divisor
    #: up to 12, so each parallelism the autoscaler picks spreads key groups evenly.
    max_parallelism: int = 120
    #: Shards (keys) of ``decide: exact`` (by SHA-256) and ``decide: verdicts, windows`` (by
    #: producer and window); fixed for a job's state (see imgstream.domain.sharding).
    dedup_shards: int = DEFAULT_SHARDS
    #: Top bits of a band value that pick its near shard: ``bands x 2**bits`` near shards, each
    #: non-exact image visiting ``bands x (1 + bits)`` of them; fixed for a job's state.
    near_split_bits: int = DEFAULT_NEAR_SPLIT_BITS
    #: Where ``decide: near`` runs: ``jvm`` (``dev.imgstream.flink.NearIndex``, uid ``decide-near-jvm``)
    #: or ``python`` (``flink_jobs.sharded.DecideNear``, uid ``decide-near``: what a savepoint written
    #: before 2026-12-06 holds the near index in). Fixed for a job's state, like the shards.
    near_stage: str = "jvm"
    checkpoint_interval_ms: int = 10_000
    #: ``file:///...``; the stack passes ``.stack/state/flink/checkpoints``. Empty = cluster default.
    checkpoint_dir: str = ""
    #: Exponential-delay restarts, unbounded: a lost TaskManager may take a minute to return.
    #: ``hashmap`` / ``rocksdb``; empty = the cluster's default (RocksDB on the local stack).
    #: ``hashmap`` because RocksDB buys nothing here: the Python worker mirrors the whole state
    #: in memory anyway (flink_jobs/mirror.py). And with RocksDB, cancelling the job while its
    #: Python worker was writing state aborted the TaskManager twice on this machine (RocksDB's
    #: "pthread lock: Invalid argument" on a closed backend). Checkpoints still go to disk.
    state_backend: str = "hashmap"
    restart_initial_backoff_ms: int = 1_000
    restart_max_backoff_ms: int = 30_000
    #: Bounded out-of-orderness of ``received_at`` (gateways' clocks and publish delay). Every
    #: verdict waits for it, so it is most of the upload -> status latency (issue 17: 5 s -> 1.5 s).
    #: ``received_at`` is stamped when the body is in, before the checks and the object PUT, so
    #: an event trails its partition's newest by at most one upload's processing time (well
    #: under a second here); clocks ahead are clamped (``clock_skew_tolerance_ms``). An event
    #: behind the bound is not lost: it is decided as late (windows revised, ``late_events``).
    out_of_orderness_ms: int = 1_500
    #: ``received_at`` further ahead of the Kafka append time than this is clamped to it (one
    #: wrong clock must not move everyone's watermark; see ``imgstream.domain.clock``).
    clock_skew_tolerance_ms: int = CLOCK_SKEW_TOLERANCE_MS
    #: A Kafka partition silent this long stops holding the watermark back. Heartbeats keep
    #: every partition alive, so this only matters when the heartbeat process is down; it is
    #: long because a backpressured (slow, restarting) job must not mistake a backlog for silence.
    idle_timeout_ms: int = 60_000
    #: How often the source emits a watermark (Flink's ``pipeline.auto-watermark-interval``).
    #: Each watermark makes every Python operator finish its bundle - a synchronous round trip
    #: to its worker - and ``decide`` fire its timers, so this sets how often the job stalls.
    #: 500 ms (was 1 s, issue 17): half a second less status latency for ~2 stalls more a second.
    watermark_interval_ms: int = 500
    #: The grid ``decide``'s watermarks move on (``WatermarkBatcher``; 1 = every watermark as the
    #: source makes it). The source's subtasks emit out of phase, so their minimum moves several
    #: times per interval, and every move is a step - a timer round trip - of every shard key with
    #: work in each of the three ``decide`` stages. On a 1 s grid it moves once a second: a live
    #: stream at 500/s cost the Python workers ~26 % less CPU per event, for ~0.3-0.5 s more
    #: latency (docs/flink-jobs.md, Performance). A lower watermark is still a watermark: fewer
    #: events are late, windows close up to a quantum later. 1 or a multiple of the stages'
    #: 200 ms buckets (checked), so each forwarded watermark ends a bucket.
    watermark_quantum_ms: int = 1_000
    window_ms: int = MINUTE_MS
    #: Late events up to this far behind still update their window (a new revision).
    allowed_lateness_ms: int = 5 * MINUTE_MS
    near_max_distance: int = DEFAULT_NEAR_MAX_DISTANCE
    #: ``NAME=SCOPE[,no-near];...`` with ``*`` as default, see ``DedupPolicy.parse_producers``.
    dedup_policy: str = ""
    exact_ttl_ms: int = DEFAULT_EXACT_TTL_MS
    near_ttl_ms: int = DEFAULT_NEAR_TTL_MS
    replay_ttl_ms: int = DEFAULT_REPLAY_TTL_MS
    max_band_candidates: int = MAX_BAND_CANDIDATES
    #: Bands of the near-duplicate index (0 = automatic: 4 bands of 16 bits at the default
    #: distance, see ``imgstream.domain.hashing.default_bands``). A change re-bands the stored index.
    near_bands: int = 0
    #: Keyed states cached in each Python worker. The pipeline does not rely on it: its
    #: MapState is mirrored in the worker (flink_jobs/mirror.py).
    python_state_cache: int = 100_000
    #: MapState writes a Python worker buffers before it flushes them to the JVM, waiting. The
    #: dedup index writes ~8 entries per image; at PyFlink's default (1,000) the flushes took
    #: half of the deciding time (283 -> 405 events/s measured with 100,000). A checkpoint
    #: flushes them anyway; the buffered values are the mirror's, so memory barely grows.
    python_map_write_cache: int = 100_000
    #: Records a Python operator takes before it must finish the bundle: the JVM task then
    #: waits, idle, until the worker has answered all of them (PyFlink's default is 1,000).
    #: Bundles also end on each watermark, each checkpoint and after ``python_bundle_time_ms``.
    python_bundle_size: int = 100_000
    #: The longest a Python operator's bundle stays open. A watermark that meets an open bundle
    #: waits for it to finish (PyFlink holds the output watermark until then), so each Python
    #: operator on the path (clean and the three decide stages) can add up to this much to
    #: every verdict: at PyFlink's default (1 s) that was ~2 s of the status latency at 50/s;
    #: 250 ms costs ~1.1 s more p95 for ~7 % less job CPU (docs/flink-jobs.md, Performance).
    python_bundle_time_ms: int = 100
    #: Records ``decide: exact``'s batching (``flink_jobs.pipeline.batched``) holds at most in
    #: each subtask before it lets every batch go early; normally batches leave at each watermark.
    batch_max_records: int = 10_000
    #: The batches a ``decide`` stage's step sends the next one are merged in the JVM per subtask,
    #: destination key and watermark (``flink_jobs.pipeline.merged``); false: one per key pair.
    merge_batches: bool = True
    #: Garbage collection in the Python workers (``flink_jobs/worker_gc.py``): CPython's automatic
    #: collector off, a collection of what is younger than the last one every this many seconds;
    #: 0 keeps the automatic collector. Its full collections traverse the whole index and took
    #: 13-17 % of the ``decide`` workers' CPU, freeing almost nothing.
    python_gc_young_every_s: int = YOUNG_EVERY_S
    #: Seconds between full collections of the schedule (the only ones that see everything).
    python_gc_full_every_s: int = FULL_EVERY_S
    #: Cassandra requests in flight per subtask of the deciding operator. A step can hold
    #: thousands of rows (one watermark advance); 256 batches at once overran the local node
    #: (server-side write timeouts), 32 keep it busy without queueing past its 2 s timeout.
    sink_capacity: int = 32
    #: Rows per Cassandra request (unlogged batch) for images/duplicates/late_events; 1 = no
    #: batches. 8 cuts the driver's CPU per row by 4x; keep it <= 10: Cassandra warns about
    #: unlogged batches over more than 10 partitions, and 20-row batches took 47 ms instead of 3.
    sink_batch_size: int = 8
    #: Cassandra request timeout of the sink: a write slower than this fails the task (restart).
    sink_timeout_ms: int = 30_000
    #: PyFlink's ``process`` mode: a Python worker process per slot. ``thread`` (Python embedded
    #: in the TaskManager through PEMJA) is refused: on Java 17 only the first thread-mode job
    #: of a TaskManager starts - the next fails to load Python (``NoSuchFieldException:
    #: loadedLibraryNames``) and restarts forever - and it was not faster here (one GIL for
    #: every Python operator: 806 vs 842 events/s, ~13 % less CPU per event).
    python_execution_mode: str = "process"
    #: Slot sharing group of ``decide`` ("" = the default group, shared with ``clean``). PyFlink
    #: runs one Python worker process per slot, so its own group gives ``decide`` its own worker
    #: (its own GIL), in parallel with the one that cleans; it takes one more task slot.
    decide_slot_group: str = "decide"
    #: Stop at the offsets current at start (benchmarks, batch re-runs); ``--bounded=1`` or ``true``.
    bounded: bool = False
    #: Events already in the topic at start may have rows from an earlier job although this one
    #: starts empty (``make flink-reset``): check and clean them like a restore's replay.
    recheck_written: bool = False
    #: Extra jars (``file://`` URLs); the Kafka connector is found by :func:`connector_jars`.
    jars: tuple[str, ...] = ()

    def dedup(self) -> DedupPolicy:
        default, overrides = DedupPolicy.parse_producers(self.dedup_policy)
        return DedupPolicy(
            near_max_distance=self.near_max_distance,
            default=default,
            producers=overrides,
            exact_ttl_ms=self.exact_ttl_ms,
            near_ttl_ms=self.near_ttl_ms,
            replay_ttl_ms=self.replay_ttl_ms,
            max_band_candidates=self.max_band_candidates,
            near_bands=self.near_bands or None,
        )

    def gc_schedule(self) -> GcSchedule:
        """The Python workers' garbage collection (validates the two intervals)."""
        return GcSchedule(self.python_gc_young_every_s, self.python_gc_full_every_s)

    def shard_plan(self) -> ShardPlan:
        """Where the dedup and window state lives (validates the shard settings)."""
        return ShardPlan.for_policy(self.dedup(), self.dedup_shards, self.near_split_bits)

    def __post_init__(self) -> None:
        if not 1 <= self.parallelism <= self.max_parallelism:
            raise ValueError(f"parallelism must be in 1..max_parallelism ({self.max_parallelism}), got {self.parallelism}")
        if self.batch_max_records < 1:
            raise ValueError(f"batch_max_records must be at least 1, got {self.batch_max_records}")
        if self.watermark_quantum_ms != 1 and (self.watermark_quantum_ms < 1 or self.watermark_quantum_ms % ORDER_BUCKET_MS):
            raise ValueError(f"watermark_quantum_ms must be 1 (no grid) or a positive multiple of {ORDER_BUCKET_MS} "
                             f"(the stages' buckets), got {self.watermark_quantum_ms}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {sorted(allowed)}, got {getattr(self, name)!r}")
        self.gc_schedule()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> "PipelineConfig":
        """Build from ``IMGSTREAM_FLINK_<FIELD>`` variables, then ``--field=value`` arguments."""
        env = os.environ if env is None else env
        readers = (ConfigReader(_parse_args(argv), prefix="--"), ConfigReader(env, prefix="IMGSTREAM_FLINK_"))
        types = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("kafka", "cassandra"):
                continue
            # an argument wins over the variable; either may be missing (the field's default)
            read = next((r for r in readers if r.is_set(_variable(r, f))), None)
            if read is not None:
                values[f.name] = _read_field(read, _variable(read, f), types[f.name])
        config = cls(kafka=KafkaConfig.from_env(env), cassandra=CassandraConfig.from_env(env), **values)
        config.shard_plan()  # validate the policy and the shards now, not on a worker
        return config


def _variable(read: ConfigReader, f: Field[Any]) -> str:
    """The name ``f`` has for ``read``: ``window_ms`` after ``--``, ``WINDOW_MS`` after ``IMGSTREAM_FLINK_``."""
    return f.name if read.prefix == "--" else f.name.upper()


def _read_field(read: ConfigReader, name: str, kind: Any) -> object:
    """The value of ``name``, parsed as the field's type ``kind``."""
    if kind is bool:
        return read.flag(name)
    if kind is int:
        return read.integer(name)
    if kind is str:
        return read.text(name)
    if kind == tuple[str, ...]:
        return tuple(item for item in read.text(name).split(",") if item)
    raise TypeError(f"PipelineConfig.{name}: no reader for {kind!r}; add one to flink_jobs/config.py")


#: Settings with a fixed set of values (checked when the config is built, not on a worker).
CHOICES: Mapping[str, frozenset[str]] = {
    "python_execution_mode": frozenset({"process"}),
    "state_backend": frozenset({"", "hashmap", "rocksdb"}),
    "dlq_delivery": frozenset({"exactly_once", "at_least_once"}),
    "near_stage": frozenset({"jvm", "python"}),
}


def _parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``--key=value`` arguments as ``{"--key": value}``, dashes in the key read as underscores."""
    out: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"expected --key=value, got {arg!r}")
        key, _, value = arg[2:].partition("=")
        out["--" + key.replace("-", "_")] = value
    return out


def connector_jars(extra: Sequence[str] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """``file://`` URLs of the Kafka connector: ``IMGSTREAM_FLINK_KAFKA_JAR``, else the jar in
    ``IMGSTREAM_FLINK_LIB`` or ``.stack/lib/flink``.

    Raises with the jar's name when it is missing, instead of Flink's later
    "Could not find the Java class".
    """
    return [_jar(KAFKA_CONNECTOR_JAR, "IMGSTREAM_FLINK_KAFKA_JAR", env), *extra]


def ops_jar(env: Mapping[str, str] | None = None) -> str:
    """``file://`` URL of the job's own JVM operators (:data:`OPS_JAR`): ``IMGSTREAM_FLINK_OPS_JAR``,
    else the jar in ``IMGSTREAM_FLINK_LIB`` or ``.stack/lib/flink``; raises naming it when missing."""
    return _jar(OPS_JAR, "IMGSTREAM_FLINK_OPS_JAR", env)


def _jar(name: str, variable: str, env: Mapping[str, str] | None) -> str:
    env = os.environ if env is None else env
    lib = Path(env.get("IMGSTREAM_FLINK_LIB", Path(__file__).resolve().parent.parent / ".stack" / "lib" / "flink"))
    jar = Path(env.get(variable) or lib / name)
    if not jar.is_file():
        raise FileNotFoundError(
            f"jar {name} not found in {lib}; run `make jars` (it resolves and compiles local-stack/jvm/flink) "
            f"or set IMGSTREAM_FLINK_LIB or {variable}"
        )
    return jar.resolve().as_uri()
