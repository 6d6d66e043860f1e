"""The imgstream pipeline job: clean -> decide (replay drop, exact/near dedup, windows) -> Cassandra.

Topology (operator names as shown in the Flink web UI; ``[key]`` = keyed by; every operator at
the job's parallelism)::

    source: Kafka images.uploaded (per-partition watermarks on received_at; each record's exact
            shard from its SHA-256, in SQL: all in the JVM)
      -> [exact shard] batch: per shard and watermark (JVM: one batch per shard per interval)
         -> clean, decide: exact - cleaning, replay drop + exact dedup, in decision order
              |-- dead letters --> kafka-dead-letters (images.dlq)
              |-- near ops (typed rows, one per image) --> route: near shards (JVM, no state)
              |      --> [near shard] decide: near (JVM: NearIndex) - probe + register band keys
              v                      | best matches
            [window shard] decide: verdicts, windows <-'  (verdicts, upload-stats windows;
                   one record per step) -> cassandra: write steps (in clean's Python workers)
                   -> results (discarded; tests collect them)

    source: Kafka images.deleted (uid source-deletions)
      -> cassandra: apply deletions (uid apply-deletions; the image's status becomes deleted)
         -> deletions-applied (discarding)      '-> kafka-dead-letters-deletions (images.dlq)

The deletion branch shares nothing with the upload branch (no state, no union): adding it left
every uid and state of the upload branch as it was, so a savepoint taken before it still maps.

Each ``decide`` stage holds ``1/N`` of the state at parallelism ``N`` (shards: SHA-256 for
replay and exact, band keys for near, (producer, window) for windows), and applies it in the
decision order every stage agrees on, so the verdicts equal the single-index reference
(``imgstream.domain.sharding``; ``flink_jobs.sharded``). Each hop between Python operators is a
JVM round trip per element, so the records reach ``decide: exact`` in batches made in the JVM
(:func:`batched`), and past it the stages exchange one batch per step and key pair
(``flink_jobs.sharded``), not a record per image (and per near shard). State is Flink
``MapState`` mirrored per key in the Python worker (see ``flink_jobs.mirror``): a decision
costs no round trip to the JVM.

``build`` wires everything from a raw stream and returns the output streams; ``attach_sinks``
adds the production sinks; ``main`` reads config, builds the Kafka source and runs.

Event time advances only with records in the topic (uploads, and heartbeats that
``flink_jobs.heartbeat`` writes into every partition), never with wall-clock time inside the
job: a replay after a failure then meets the same records in the same per-partition order,
so dedup order, lateness and window contents come out the same.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from pyflink.common import Configuration, TypeInformation, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee, Sink
from pyflink.datastream.connectors.kafka import (KafkaOffsetResetStrategy, KafkaOffsetsInitializer,
                                                 KafkaRecordSerializationSchema, KafkaSink, KafkaSource)
from pyflink.java_gateway import get_gateway
from pyflink.table import Schema, StreamTableEnvironment, TableEnvironment

from imgstream.adapters.kafka import TopicSpec, ensure_topics

from flink_jobs.cassandra_sink import CassandraWriter
from flink_jobs import worker_gc
from flink_jobs.config import PipelineConfig, connector_jars, ops_jar
from flink_jobs.functions import DLQ_TAG, PRUNE_EVERY_MS, PRUNE_SLACK_MS, ApplyDeletions, Cleaner, WriteSteps
from flink_jobs.near_index import NEAR_OP_TYPE, jvm_near_stage, near_index_spec, route_near_ops
from flink_jobs.sharded import BATCH_TYPE, NEAR_TAG, DecideExact, DecideNear, DecideWindows

REPO_ROOT = Path(__file__).resolve().parent.parent
DISCARDING_SINK = "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink"
#: Partitions of the deletion topic when the job has to create it (as the local stack does).
DELETED_TOPIC_PARTITIONS = 3
#: Uid of ``clean, decide: exact`` (``decide-exact`` until its shards were chosen in the JVM).
EXACT_UID = "clean-decide-exact"
#: Flink's name of the slot sharing group operators are in unless told otherwise.
DEFAULT_SLOT_GROUP = "default"


@dataclass(frozen=True)
class PipelineStreams:
    """The job's outputs, before sinks: what tests collect and ``attach_sinks`` ends."""

    #: One dict per step of ``decide``: ``{"verdicts": [...], "windows": [...]}`` (verdicts with
    #: their lateness; versions of upload_stats rows); when writing is on, the writer's output:
    #: nothing (the steps end in Cassandra).
    results: DataStream
    dead_letters: DataStream  # JSON strings for the dead-letter topic
    #: The deletion branch's dead letters (None without it): a sink of their own, not a union
    #: with ``dead_letters``, so the upload branch's sink keeps its inputs (and its state).
    deletion_dead_letters: DataStream | None = None
    #: What the deletion branch emits (nothing: its rows are the result), None without it.
    deletions_applied: DataStream | None = None


def build(
    env: StreamExecutionEnvironment,
    t_env: StreamTableEnvironment,
    raw: DataStream,
    config: PipelineConfig,
    write: bool = True,
    deletions: DataStream | None = None,
) -> PipelineStreams:
    """Wire the pipeline on ``raw`` (the upload records as :func:`records` makes them: rows
    ``shard, (value, partition, offset), event_time`` with event-time timestamps and watermarks)
    and return its output streams; ``write=False`` leaves
    Cassandra out (a test collects ``results`` instead). ``deletions`` (raw values of the
    deletion topic, strings) adds the branch that applies them (only with ``write``)."""
    policy, plan = config.dedup(), config.shard_plan()
    cleaner = Cleaner(config.topic, config.clock_skew_tolerance_ms)
    exact = (
        batched(by_first_field(raw, RECORD_TYPE), config.batch_max_records, config.decide_slot_group,
                config.watermark_quantum_ms)
        .process(DecideExact(policy, plan, config.window_ms, config.allowed_lateness_ms, cleaner), BATCH_TYPE)
        .name("clean, decide: exact")
        # a new uid: its state is routed by another rule than "decide-exact"'s (crc32 of the
        # SHA-256), so a savepoint of the old job must not map onto it (submit refuses, names
        # make flink-reset) - the state's layout check would only fail it later, at a first timer
        .uid(EXACT_UID)
    )
    def hop(stream: DataStream, name: str, uid: str) -> DataStream:
        """A stage's batches on their way to the next: merged per subtask, or as they are."""
        return merged(stream, name, uid, config.decide_slot_group) if config.merge_batches else stream

    batch_type = MERGED_ITEMS_TYPE if config.merge_batches else Types.PICKLED_BYTE_ARRAY()
    near_spec = near_index_spec(policy, plan, PRUNE_EVERY_MS, PRUNE_SLACK_MS)
    near_ops = by_first_field(route_near_ops(exact.get_side_output(NEAR_TAG), near_spec, config.decide_slot_group),
                              Types.LIST(NEAR_OP_TYPE))  # fmt: skip
    if config.near_stage == "jvm":
        near = jvm_near_stage(near_ops, near_spec, BATCH_TYPE)
    else:
        near = near_ops.process(DecideNear(policy, plan), BATCH_TYPE).name("decide: near").uid("decide-near")
    windows = DecideWindows(config.window_ms, config.allowed_lateness_ms, config.kafka, config.topic,
                            config.recheck_written)  # fmt: skip
    to_windows = hop(exact, "merge: exact verdicts", "merge-exact-verdicts").union(
        hop(near, "merge: near matches", "merge-near-matches"))
    results = (
        by_first_field(to_windows, batch_type)
        .process(windows)
        .name("decide: verdicts, windows")
        .uid("decide-windows")
    )
    if config.decide_slot_group:
        for stage in (exact, near, results):
            stage.slot_sharing_group(config.decide_slot_group)
    if write:
        writer = CassandraWriter(
            config.cassandra, config.sink_capacity, config.sink_timeout_ms / 1000, config.sink_batch_size
        )
        # never fused into decide (PyFlink merges chained Python operators into one): its own
        # task, in clean's slot group (it would inherit decide's) and so in clean's Python worker
        results = (
            results.flat_map(WriteSteps(writer, config.window_ms))
            .name("cassandra: write steps")
            .uid("write-cassandra")
            .disable_chaining()
            .slot_sharing_group(DEFAULT_SLOT_GROUP)
        )
    streams = PipelineStreams(results, exact.get_side_output(DLQ_TAG))
    if deletions is None or not write:
        return streams
    applied = (
        deletions.process(ApplyDeletions(CassandraWriter(config.cassandra, 1, config.sink_timeout_ms / 1000, 1),
                                         config.deleted_topic))
        .name("cassandra: apply deletions")
        .uid("apply-deletions")
        .slot_sharing_group(DEFAULT_SLOT_GROUP)
    )
    return replace(streams, deletion_dead_letters=applied.get_side_output(DLQ_TAG), deletions_applied=applied)


def attach_sinks(streams: PipelineStreams, config: PipelineConfig) -> None:
    """Kafka for dead letters; results are already in Cassandra and end here."""
    streams.results.sink_to(Sink(DISCARDING_SINK)).name("results-written").uid("results-written")
    streams.dead_letters.sink_to(dlq_sink(config)).name("kafka-dead-letters").uid("kafka-dead-letters")
    if streams.deletions_applied is not None and streams.deletion_dead_letters is not None:
        streams.deletions_applied.sink_to(Sink(DISCARDING_SINK)).name("deletions-applied").uid("deletions-applied")
        streams.deletion_dead_letters.sink_to(dlq_sink(config, "dlq-deletions")).name(
            "kafka-dead-letters-deletions").uid("kafka-dead-letters-deletions")


def deletions_source(env: StreamExecutionEnvironment, config: PipelineConfig) -> DataStream:
    """Raw values (strings) of the deletion topic. No event time: a deletion counts in no
    window, so it needs no watermark (and holds none back). Offsets are checkpointed like the
    upload source's; ``startup_mode`` and ``bounded`` mean the same."""
    starting = {
        "earliest-offset": KafkaOffsetsInitializer.earliest(),
        "latest-offset": KafkaOffsetsInitializer.latest(),
    }.get(config.startup_mode, KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(config.kafka.bootstrap_servers)
        .set_topics(config.deleted_topic)
        .set_group_id(config.group_id)
        .set_starting_offsets(starting)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("isolation.level", "read_committed")
    )
    if config.bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(),
                           f"source: Kafka {config.deleted_topic}").uid("source-deletions")


def dlq_sink(config: PipelineConfig, name: str = "dlq") -> KafkaSink:
    exactly_once = config.dlq_delivery == "exactly_once"
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(config.kafka.bootstrap_servers)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(config.dlq_topic)
            .set_value_serialization_schema(SimpleStringSchema())
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE if exactly_once else DeliveryGuarantee.AT_LEAST_ONCE)
    )
    if exactly_once:
        # The prefix is unique per job (see PipelineConfig.job_name); the timeout must outlive
        # a checkpoint interval plus a restart.
        builder = builder.set_transactional_id_prefix(f"{config.job_name}-{name}").set_property(
            "transaction.timeout.ms", str(max(600_000, 10 * config.checkpoint_interval_ms))
        )
    return builder.build()


def kafka_source(t_env: StreamTableEnvironment, config: PipelineConfig) -> DataStream:
    """The upload topic's records as :func:`records`, watermarked per partition in the JVM.

    Event time is ``received_at`` read from the JSON (the Kafka timestamp when unreadable),
    never further ahead of the Kafka timestamp than the clock-skew tolerance
    (:func:`event_time_sql`); the watermark of each partition trails its largest event time
    by the out-of-orderness bound; a partition silent for ``idle_timeout_ms`` stops holding
    the others back.
    """
    lag = f"INTERVAL '{config.out_of_orderness_ms / 1000:.3f}' SECOND"
    register_sql_functions(t_env)
    bounded = "\n  'scan.bounded.mode' = 'latest-offset'," if config.bounded else ""
    t_env.execute_sql(
        f"""
CREATE TEMPORARY TABLE raw_uploads (
  `value` BYTES,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `event_time` AS CAST({event_time_sql(config.clock_skew_tolerance_ms)} AS TIMESTAMP_LTZ(3)),
  WATERMARK FOR `event_time` AS `event_time` - {lag}
) WITH (
  'connector' = 'kafka',
  'topic' = '{config.topic}',
  'properties.bootstrap.servers' = '{config.kafka.bootstrap_servers}',
  'properties.group.id' = '{config.group_id}',
  'properties.auto.offset.reset' = 'earliest',
  'properties.isolation.level' = 'read_committed',
  'scan.startup.mode' = '{config.startup_mode}',
  'scan.watermark.idle-timeout' = '{config.idle_timeout_ms} ms',{bounded}
  'format' = 'raw'
)"""
    )
    return records(t_env, "raw_uploads", config)


#: A raw upload record as ``decide: exact`` reads it.
RECORD_TYPE = Types.ROW_NAMED(["value", "partition", "offset"],
                              [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG()])  # fmt: skip
#: What :func:`records` makes: the exact shard (the key), the raw record, the event time.
RECORDS_TYPE = Types.ROW_NAMED(["shard", "record", "event_time"], [Types.INT(), RECORD_TYPE, Types.INSTANT()])


def records(t_env: StreamTableEnvironment, table: str, config: PipelineConfig) -> DataStream:
    """The upload records of ``table`` (columns ``value``, ``partition``, ``offset`` and a
    rowtime ``event_time`` of type TIMESTAMP_LTZ(3)) as rows ``shard, (value, partition,
    offset), event_time``: the exact shard of each record's SHA-256 computed in the JVM
    (:func:`exact_shard_sql`), so that records are keyed before any Python touches them."""
    shard = exact_shard_sql("CAST(`value` AS STRING)", "`offset`", config.shard_plan().shards)
    query = f"SELECT {shard} AS `shard`, ROW(`value`, `partition`, `offset`) AS `record`, `event_time` FROM {table}"
    stream = t_env.to_data_stream(t_env.sql_query(query))
    # to_data_stream types its rows for the Table API; a keyed Python operator takes Flink's
    # row type (the rows themselves are the same objects)
    stream._j_data_stream.getTransformation().setOutputType(RECORDS_TYPE.get_java_type_info())
    return stream


def records_from_stream(t_env: StreamTableEnvironment, raw: DataStream, config: PipelineConfig) -> DataStream:
    """:func:`records` of a stream built in Python (tests, benches): rows with fields ``value``
    (bytes), ``partition`` and ``offset``, with event-time timestamps and watermarks."""
    schema = (Schema.new_builder().column_by_metadata("event_time", "TIMESTAMP_LTZ(3)", "rowtime")
              .watermark("event_time", "SOURCE_WATERMARK()").build())  # fmt: skip
    name = f"raw_{abs(hash(raw)):x}"
    t_env.create_temporary_view(name, t_env.from_data_stream(raw, schema))
    return records(t_env, name, config)


#: The key of every keyed stage (its shard), as PyFlink types an ``int`` key: ``Row(key)``.
SHARD_KEY_TYPE = Types.ROW([Types.INT()])


def by_first_field(stream: DataStream, value_type: TypeInformation) -> KeyedStream:
    """``stream`` of rows ``(int key, value, ...)`` keyed by the key in the JVM: the keyed Python
    operator after it gets ``value`` (of ``value_type``), with the key as its current key.
    PyFlink's ``key_by`` would run a Python function per record to find the key: one more
    round trip into Python (a stage of its own after a union). The key's type is PyFlink's for
    an ``int`` key (``Row(key)``), so state keyed either way is the same."""
    keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), SHARD_KEY_TYPE.get_java_type_info())
    return KeyedStream(keyed, value_type, stream)


#: An item of a batch: a raw record and its timestamp (the event time), as WatermarkBatcher makes it.
BATCH_ITEM_TYPE = Types.ROW([RECORD_TYPE, Types.LONG()])
#: What ``decide: exact`` takes: ``Row(shard, [items])``, one per shard and watermark interval.
RECORD_BATCH_TYPE = Types.ROW([Types.INT(), Types.LIST(BATCH_ITEM_TYPE)])
#: Name and uid of the JVM operator that batches the records (no state: a savepoint taken
#: before it existed maps onto the job as it is).
BATCHER_NAME, BATCHER_UID = "batch: per shard and watermark", "batch-records"


def batched(keyed: KeyedStream, max_records: int, slot_group: str = "", watermark_quantum_ms: int = 1) -> KeyedStream:
    """``keyed`` (rows ``(int key, record)``) as one ``Row(key, [(record, timestamp), ...])``
    per key and watermark interval, grouped in the JVM (``dev.imgstream.flink.WatermarkBatcher``,
    local-stack/jvm/flink) and still keyed by the same key, without a shuffle: the Python
    operator after it pays PyFlink's per-element machinery once per batch, not per record.
    A batch leaves before the watermark that follows its records, so each record meets the
    watermark it arrived under; at most ``max_records`` are held (then all leave early).
    ``slot_group`` must be the next operator's, so the two chain into one task. Watermarks go on
    on a grid of ``watermark_quantum_ms`` (1: as they come; see ``PipelineConfig``)."""
    jvm = get_gateway().jvm
    j_batched = _jvm_batcher(keyed, BATCHER_NAME, BATCHER_UID, RECORD_BATCH_TYPE, max_records, watermark_quantum_ms,
                             slot_group)  # fmt: skip
    j_keyed = jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
        j_batched, jvm.KeyByKeySelector(), SHARD_KEY_TYPE.get_java_type_info())
    return KeyedStream(j_keyed, Types.LIST(BATCH_ITEM_TYPE), DataStream(j_batched))


#: Batches :func:`merged` holds at most per subtask before all leave early (a bound on memory; a
#: step sends at most (keys of the stage) x (keys of the next)).
MERGE_MAX_RECORDS = 10_000
#: A stage's batches for one key as :func:`merged` makes them: ``[(pickled batch, timestamp), ...]``.
MERGED_ITEMS_TYPE = Types.LIST(Types.ROW([Types.PICKLED_BYTE_ARRAY(), Types.LONG()]))


def merged(stream: DataStream, name: str, uid: str, slot_group: str = "") -> DataStream:
    """``stream`` (a Python stage's output: rows ``(shard, pickled batch)``) as one
    ``Row(shard, [(batch, timestamp), ...])`` per shard and watermark, in the JVM
    (``WatermarkBatcher`` forwarding every watermark), chained to the stage that makes them.

    Each key of a stage sends each key of the next its own batch per step, so without this a
    step sends up to (keys of the stage) x (keys of the next) records - 32 x 32 to the verdict
    stage - whatever the rate, each a pickled element through the JVM and a ``pending`` entry;
    at 500 events/s they carried ~3 items each. Merged, a step sends (subtasks) x (keys of the
    next). Records keep their place before the watermark that follows them (the operator
    emits them before forwarding it), and no state is held across a barrier."""
    return DataStream(_jvm_batcher(stream, name, uid, Types.ROW([Types.INT(), MERGED_ITEMS_TYPE]),
                                   MERGE_MAX_RECORDS, 1, slot_group))


def _jvm_batcher(stream: DataStream, name: str, uid: str, output_type: TypeInformation, max_records: int,
                 watermark_quantum_ms: int, slot_group: str) -> Any:
    """The Java stream of ``stream`` through a ``WatermarkBatcher`` named ``name`` (uid ``uid``)."""
    j_batcher = get_gateway().jvm.dev.imgstream.flink.WatermarkBatcher(max_records, watermark_quantum_ms)
    j_batched = stream._j_data_stream.transform(name, output_type.get_java_type_info(), j_batcher)
    j_batched.uid(uid)
    if slot_group:
        j_batched.slotSharingGroup(slot_group)
    return j_batched


def sha256_sql(text_sql: str) -> str:
    """SQL for the ``sha256`` of a raw upload whose value is ``text_sql``, as cleaning
    normalises it (ASCII white space stripped, lower case); NULL when it is not a valid one
    (the event will be rejected). Java's ``\\s`` is cleaning's ``ASCII_WHITESPACE``
    (``tests/unit/test_flink_routing.py`` holds them equal)."""
    return f"REGEXP_EXTRACT(LOWER(JSON_VALUE({text_sql}, '$.sha256')), '^\\s*([0-9a-f]{{64}})\\s*$', 1)"


def exact_shard_sql(text_sql: str, offset_sql: str, shards: int) -> str:
    """SQL for the exact shard of a raw upload record (value ``text_sql``, offset
    ``offset_sql``): the rule of :meth:`ShardPlan.exact_shard
    <imgstream.domain.sharding.ShardPlan.exact_shard>` on its SHA-256 (:func:`sha256_sql`);
    without a valid one, the shard of its offset. The value is read once: Flink's code
    generator does not share repeated sub-expressions, so each mention would parse the JSON
    again (7 mentions cost 21 us more per record than one, measured)."""
    return (f"COALESCE(ABS(MOD(HASH_CODE({sha256_sql(text_sql)}), {shards})), "
            f"CAST(MOD({offset_sql}, {shards}) AS INT))")


#: The SQL name of the source's event-time function (:func:`register_sql_functions`).
EVENT_TIME_FUNCTION = "IMGSTREAM_EVENT_TIME"


def register_sql_functions(t_env: TableEnvironment) -> None:
    """Register the job's SQL functions (Java, in the ops jar, which ``t_env`` must load:
    ``pipeline.jars``) with ``t_env``: :data:`EVENT_TIME_FUNCTION`."""
    t_env.create_java_temporary_system_function(EVENT_TIME_FUNCTION, "dev.imgstream.flink.EventTime")


def event_time_sql(clock_skew_tolerance_ms: int, value_sql: str = "CAST(`value` AS STRING)",
                   kafka_ts_sql: str = "CAST(`kafka_ts` AS TIMESTAMP(3))") -> str:
    """The source's event time as SQL: ``received_at`` read from the record's JSON (``value_sql``),
    or the Kafka timestamp when it is unreadable or more than ``clock_skew_tolerance_ms`` ahead
    of it - the rule of :func:`imgstream.domain.clock.clamp_event_time`, where the watermark is
    made. One call of ``dev.imgstream.flink.EventTime`` (:func:`register_sql_functions`): the
    same rule as a ``CASE`` of ``JSON_VALUE``/``TO_TIMESTAMP`` parsed the JSON three times, and
    the source evaluates the event time twice (watermark, then row)."""
    return f"{EVENT_TIME_FUNCTION}({value_sql}, {kafka_ts_sql}, CAST({int(clock_skew_tolerance_ms)} AS BIGINT))"


def event_time_case_sql(clock_skew_tolerance_ms: int, value_sql: str = "CAST(`value` AS STRING)",
                        kafka_ts_sql: str = "CAST(`kafka_ts` AS TIMESTAMP(3))") -> str:
    """:func:`event_time_sql`'s rule in plain SQL, as the source ran it before the function: the
    reference the function is tested (``tests/unit/test_flink_clock.py``) and measured
    (``bench/source_sql.py``) against. Each mention of ``received_at`` parses the JSON again."""
    received_at = (f"TO_TIMESTAMP(REPLACE(REPLACE(JSON_VALUE({value_sql}, '$.received_at'), 'T', ' '), 'Z', ''), "
                   "'yyyy-MM-dd HH:mm:ss.SSS')")
    tolerance = f"INTERVAL '{clock_skew_tolerance_ms / 1000:.3f}' SECOND"
    return (f"CASE WHEN {received_at} IS NULL OR {received_at} > {kafka_ts_sql} + {tolerance} "
            f"THEN {kafka_ts_sql} ELSE {received_at} END")


def flink_configuration(config: PipelineConfig, jars: Sequence[str]) -> Configuration:
    """Job-level Flink settings: checkpointing, restarts, Python worker, jars."""
    conf = Configuration()
    conf.set_string("pipeline.name", config.job_name)
    if jars:
        conf.set_string("pipeline.jars", ";".join(jars))
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.execution-mode", config.python_execution_mode)
    conf.set_string("table.local-time-zone", "UTC")
    conf.set_string("python.state.cache-size", str(config.python_state_cache))
    conf.set_string("python.fn-execution.bundle.size", str(config.python_bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(config.python_bundle_time_ms))
    conf.set_string("python.map-state.write-cache-size", str(config.python_map_write_cache))
    conf.set_string("pipeline.auto-watermark-interval", f"{config.watermark_interval_ms} ms")
    conf.set_string("execution.checkpointing.interval", f"{config.checkpoint_interval_ms} ms")
    conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    if config.checkpoint_dir:
        conf.set_string("execution.checkpointing.dir", config.checkpoint_dir)
        conf.set_string("execution.checkpointing.savepoint-dir", config.checkpoint_dir.rstrip("/") + "-savepoints")
    if config.decide_slot_group:
        # a local (mini-cluster) run sizes its one TaskManager by this; a session cluster's
        # TaskManagers have their own slots and ignore it
        conf.set_string("taskmanager.numberOfTaskSlots", str(2 * config.parallelism))
    if config.state_backend:
        conf.set_string("state.backend.type", config.state_backend)
    conf.set_string("restart-strategy.type", "exponential-delay")
    conf.set_string("restart-strategy.exponential-delay.initial-backoff", f"{config.restart_initial_backoff_ms} ms")
    conf.set_string("restart-strategy.exponential-delay.max-backoff", f"{config.restart_max_backoff_ms} ms")
    return conf


def environment(
    config: PipelineConfig, jars: Sequence[str], extra: Mapping[str, str] | None = None
) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """Execution + table environments for ``config``; ``extra`` adds raw Flink settings."""
    conf = flink_configuration(config, jars)
    for key, value in (extra or {}).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.add_jars(ops_jar())  # the job's JVM operators (batched); also loads them in this client
    env.set_parallelism(config.parallelism)
    env.set_max_parallelism(config.max_parallelism)
    for package in ("imgstream", "flink_jobs"):
        # ship the packages to the Python workers (the CLI's -pyfs does the same)
        if (REPO_ROOT / package / "__init__.py").is_file():
            env.add_python_file(str(REPO_ROOT / package))
    return env, StreamTableEnvironment.create(env)


def main(argv: Sequence[str] | None = None) -> None:
    config = PipelineConfig.from_env(argv=sys.argv[1:] if argv is None else argv)
    env, t_env = environment(config, connector_jars(config.jars))
    # the workers' garbage collection schedule (flink_jobs/worker_gc.py); only the real job sets
    # it: a mini-cluster test's Python operators run inside the test process
    env.get_config().set_global_job_parameters({worker_gc.JOB_PARAMETER: config.gc_schedule().to_parameter()})
    raw = kafka_source(t_env, config)  # first: its operator keeps the id it had before deletions
    deletions = None
    if config.deleted_topic:
        # the Kafka source fails a job whose topic is missing (a stack older than the topic)
        asyncio.run(ensure_topics(config.kafka, [TopicSpec(config.deleted_topic, DELETED_TOPIC_PARTITIONS)]))
        deletions = deletions_source(env, config)
    streams = build(env, t_env, raw, config, deletions=deletions)
    attach_sinks(streams, config)
    env.execute(config.job_name)


if __name__ == "__main__":
    main()
