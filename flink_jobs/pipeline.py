"""The imgstream pipeline job: clean -> decide (replay drop, exact/near dedup, windows) -> Cassandra.

Topology (operator names as shown in the Flink web UI; ``[key]`` = keyed by; every operator at
the job's parallelism)::

    source: Kafka images.uploaded (per-partition watermarks on received_at, in the JVM)
      -> clean ---------------------------------------> kafka-dead-letters (images.dlq)
         |  (images, and rejected events as verdicts)
         -> [exact shard] decide: exact - replay drop + exact dedup, in decision order
              |-- near ops --> [near shard] decide: near - probe + register band keys
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
JVM round trip per record, so past ``decide: exact``'s input the stages exchange one batch per
step and key pair (``flink_jobs.sharded``), not a record per image (and per near shard). State is Flink ``MapState`` mirrored per key in the Python worker
(see ``flink_jobs.mirror``): a decision costs no round trip to the JVM.

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
from typing import Mapping, Sequence

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee, Sink
from pyflink.datastream.connectors.kafka import (KafkaOffsetResetStrategy, KafkaOffsetsInitializer,
                                                 KafkaRecordSerializationSchema, KafkaSink, KafkaSource)
from pyflink.table import StreamTableEnvironment

from imgstream.adapters.kafka import TopicSpec, ensure_topics

from flink_jobs.cassandra_sink import CassandraWriter
from flink_jobs import worker_gc
from flink_jobs.config import PipelineConfig, connector_jars
from flink_jobs.functions import DLQ_TAG, ApplyDeletions, CleanFunction, WriteSteps
from flink_jobs.sharded import NEAR_TAG, DecideExact, DecideNear, DecideWindows, exact_shard_of, near_shard_key, window_shard_key

REPO_ROOT = Path(__file__).resolve().parent.parent
DISCARDING_SINK = "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink"
#: Partitions of the deletion topic when the job has to create it (as the local stack does).
DELETED_TOPIC_PARTITIONS = 3
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
    """Wire the pipeline on ``raw`` (rows ``value, topic, partition, offset`` with event-time
    timestamps and watermarks) and return its output streams; ``write=False`` leaves
    Cassandra out (a test collects ``results`` instead). ``deletions`` (raw values of the
    deletion topic, strings) adds the branch that applies them (only with ``write``)."""
    cleaned = raw.process(CleanFunction(config.clock_skew_tolerance_ms)).name("clean").uid("clean")
    policy, plan = config.dedup(), config.shard_plan()
    exact = (
        cleaned.key_by(exact_shard_of(plan), key_type=Types.INT())
        .process(DecideExact(policy, plan, config.window_ms, config.allowed_lateness_ms))
        .name("decide: exact")
        .uid("decide-exact")
    )
    near = (
        exact.get_side_output(NEAR_TAG)
        .key_by(near_shard_key, key_type=Types.INT())
        .process(DecideNear(policy))
        .name("decide: near")
        .uid("decide-near")
    )
    windows = DecideWindows(config.window_ms, config.allowed_lateness_ms, config.kafka, config.topic,
                            config.recheck_written)  # fmt: skip
    results = (
        exact.union(near)
        .key_by(window_shard_key, key_type=Types.INT())
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
    streams = PipelineStreams(results, cleaned.get_side_output(DLQ_TAG))
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
    """Raw records of the upload topic as a stream, watermarked per partition in the JVM.

    Event time is ``received_at`` read from the JSON (the Kafka timestamp when unreadable),
    never further ahead of the Kafka timestamp than the clock-skew tolerance
    (:func:`event_time_sql`); the watermark of each partition trails its largest event time
    by the out-of-orderness bound; a partition silent for ``idle_timeout_ms`` stops holding
    the others back.
    """
    lag = f"INTERVAL '{config.out_of_orderness_ms / 1000:.3f}' SECOND"
    bounded = "\n  'scan.bounded.mode' = 'latest-offset'," if config.bounded else ""
    t_env.execute_sql(
        f"""
CREATE TEMPORARY TABLE raw_uploads (
  `value` BYTES,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `event_time` AS {event_time_sql(config.clock_skew_tolerance_ms)},
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
    query = "SELECT `value`, `topic`, `partition`, `offset`, `event_time` FROM raw_uploads"
    return t_env.to_data_stream(t_env.sql_query(query))


#: ``received_at`` of a raw record as TIMESTAMP(3) (NULL when missing or unreadable).
RECEIVED_AT_SQL = (
    "TO_TIMESTAMP(REPLACE(REPLACE(JSON_VALUE(CAST(`value` AS STRING), '$.received_at'), 'T', ' '), 'Z', ''), "
    "'yyyy-MM-dd HH:mm:ss.SSS')"
)


def event_time_sql(clock_skew_tolerance_ms: int, value_sql: str = RECEIVED_AT_SQL,
                   kafka_ts_sql: str = "CAST(`kafka_ts` AS TIMESTAMP(3))") -> str:
    """The source's event time as SQL: ``received_at``, or the Kafka timestamp when it is
    unreadable or more than ``clock_skew_tolerance_ms`` ahead of it - the rule of
    :func:`imgstream.domain.clock.clamp_event_time`, where the watermark is made."""
    tolerance = f"INTERVAL '{clock_skew_tolerance_ms / 1000:.3f}' SECOND"
    return (f"CASE WHEN {value_sql} IS NULL OR {value_sql} > {kafka_ts_sql} + {tolerance} "
            f"THEN {kafka_ts_sql} ELSE {value_sql} END")


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
