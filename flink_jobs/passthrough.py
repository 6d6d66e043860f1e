"""Pass-through job: copy the upload topic to another topic (Flink SQL, in the JVM).

The throughput baseline for ``bench/flink_throughput.py``: same source, same parallelism,
no processing. ``--sink_topic`` names the target; with ``--bounded=1`` it stops at the offsets
current at start, so a benchmark can time it. ``--python=1`` routes every record through a
Python identity map on the way: the cost of the JVM <-> Python bridge alone, which every
PyFlink operator pays.
"""

from __future__ import annotations

import sys
from typing import Sequence

from pyflink.common import Types
from pyflink.table import StreamTableEnvironment

from flink_jobs.config import PipelineConfig, connector_jars
from flink_jobs.pipeline import environment


def build(t_env: StreamTableEnvironment, config: PipelineConfig, sink_topic: str) -> str:
    """Register source and sink tables; returns the INSERT statement to run."""
    common = f"'connector' = 'kafka', 'properties.bootstrap.servers' = '{config.kafka.bootstrap_servers}', 'format' = 'raw'"
    bounded = ", 'scan.bounded.mode' = 'latest-offset'" if config.bounded else ""
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE pt_source (`value` BYTES) WITH ({common}, 'topic' = '{config.topic}',
        'properties.group.id' = '{config.group_id}-passthrough', 'scan.startup.mode' = '{config.startup_mode}',
        'properties.auto.offset.reset' = 'earliest'{bounded})"""
    )
    t_env.execute_sql(f"CREATE TEMPORARY TABLE pt_sink (`value` BYTES) WITH ({common}, 'topic' = '{sink_topic}')")
    return "INSERT INTO pt_sink SELECT `value` FROM pt_source"


def _identity(value: bytes) -> bytes:
    return value


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith(("--sink_topic=", "--python="))}
    sink = own.get("--sink_topic")
    if sink is None:
        raise SystemExit("--sink_topic=NAME is required")
    config = PipelineConfig.from_env(argv=[a for a in args if a.split("=", 1)[0] not in own])
    env, t_env = environment(config, connector_jars(config.jars))
    t_env.get_config().set("pipeline.name", f"{config.job_name}-passthrough")
    insert = build(t_env, config, sink)
    if own.get("--python", "0") == "0":
        t_env.execute_sql(insert)
        return
    rows = t_env.to_data_stream(t_env.from_path("pt_source"))
    values = rows.map(lambda row: _identity(row[0]), Types.PRIMITIVE_ARRAY(Types.BYTE())).name("python-identity")
    t_env.from_data_stream(values).execute_insert("pt_sink")


if __name__ == "__main__":
    main()
