"""Pass-through job: copy the upload topic to another topic, all in the JVM (Flink SQL).

The throughput baseline for ``bench/flink_throughput.py``: same source, same parallelism,
no processing. ``--sink_topic`` names the target; with ``--bounded=1`` it stops at the offsets
current at start, so a benchmark can time it.
"""

from __future__ import annotations

import sys
from typing import Sequence

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


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    sink = next((a.split("=", 1)[1] for a in args if a.startswith("--sink_topic=")), None)
    if sink is None:
        raise SystemExit("--sink_topic=NAME is required")
    config = PipelineConfig.from_env(argv=[a for a in args if not a.startswith("--sink_topic=")])
    _, t_env = environment(config, connector_jars(config.jars))
    t_env.get_config().set("pipeline.name", f"{config.job_name}-passthrough")
    t_env.execute_sql(build(t_env, config, sink))


if __name__ == "__main__":
    main()
