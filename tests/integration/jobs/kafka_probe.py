"""A small PyFlink job for the session-cluster test: Kafka topic -> Python UDF -> Kafka topic.

Bounded (reads up to the latest offset at start), so ``flink run`` returns when it is done.
Usage: flink run -j <kafka-connector-jar> -py kafka_probe.py <bootstrap> <in-topic> <out-topic>
(the connector jar goes through ``-j``: ``pipeline.jars`` set inside a CLI-submitted job is not used).
"""

import sys

from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment
from pyflink.table.udf import udf


@udf(result_type=DataTypes.STRING())
def shout(value: str) -> str:
    """Runs in the TaskManager's Python worker: proves the venv interpreter is wired in."""
    return value.upper() + "!"


def main(bootstrap: str, source: str, sink: str) -> None:
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    t_env.get_config().set("pipeline.name", f"kafka-probe {source}")
    t_env.create_temporary_function("shout", shout)
    common = f"'connector' = 'kafka', 'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'raw'"
    t_env.execute_sql(f"""CREATE TABLE src (v STRING) WITH ({common}, 'topic' = '{source}',
        'properties.group.id' = 'probe-{source}', 'scan.startup.mode' = 'earliest-offset',
        'scan.bounded.mode' = 'latest-offset')""")
    t_env.execute_sql(f"CREATE TABLE dst (v STRING) WITH ({common}, 'topic' = '{sink}')")
    t_env.execute_sql("INSERT INTO dst SELECT shout(v) FROM src").wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
