#!/usr/bin/env python3
"""The upload source's SQL per record: the event time as one ``IMGSTREAM_EVENT_TIME`` call vs the
``CASE`` of ``JSON_VALUE``/``TO_TIMESTAMP`` it replaced, side by side in one run.

Both sides run the same Flink SQL job in batch mode, one slot: ``--records`` upload-shaped JSON
records (~480 bytes, the topic's ~540; made by the job itself from a sequence, so no source I/O),
the source's projection (the exact shard from the SHA-256, and the event time evaluated twice, as
the Kafka source does for its watermark and then for the row), into a blackhole sink. Printed: the wall
time of each side, microseconds per record and the difference, and the ratio. The JVM is shared
by both sides, so they alternate (``--rounds``), after a warm-up round; the best of each is kept.

    .venv/bin/python bench/source_sql.py [--records 1000000] [--rounds 2] [--quiet-wait-s 180]

Needs the ops jar (``make jars``); no stack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quiet  # noqa: E402

#: An upload event's JSON, made per row from its sequence number ``n`` (distinct ids, hashes, times).
_RECORD_SQL = (
    "CONCAT('{\"schema_version\": 1, \"event_type\": \"image.uploaded\", \"image_id\": \"00000000-0000-4000-8000-', "
    "LPAD(CAST(n AS STRING), 12, '0'), '\", \"producer\": \"bench-producer\", \"sha256\": \"', "
    "LPAD(CAST(n AS STRING), 64, 'a'), '\", \"phash\": \"', LPAD(CAST(n AS STRING), 16, 'f'), "
    "'\", \"size\": 51234, \"content_type\": \"image/jpeg\", \"width\": 640, \"height\": 480, "
    "\"storage_key\": \"sha256/aa/', LPAD(CAST(n AS STRING), 64, 'a'), '\", \"received_at\": \"2026-01-01T00:', "
    "LPAD(CAST(MOD(n / 60000, 60) AS STRING), 2, '0'), ':', LPAD(CAST(MOD(n / 1000, 60) AS STRING), 2, '0'), '.', "
    "LPAD(CAST(MOD(n, 1000) AS STRING), 3, '0'), 'Z\", \"gateway\": \"gw-bench-1\"}')"
)


def run(t_env, records: int, event_time_sql: str) -> float:
    """Seconds to push ``records`` rows through the source's projection with ``event_time_sql``."""
    from flink_jobs.pipeline import exact_shard_sql

    shard = exact_shard_sql("CAST(`value` AS STRING)", "`offset`", 32)
    # the event time twice, as the Kafka source computes it: for the watermark, then for the row
    query = (f"INSERT INTO sink SELECT {shard}, `value`, {event_time_sql}, {event_time_sql} FROM ("
             f"SELECT CAST({_RECORD_SQL} AS BYTES) AS `value`, n AS `offset`, "
             f"TIMESTAMP '2026-01-01 01:00:00.000' AS `kafka_ts` FROM seq)")
    started = time.perf_counter()
    t_env.execute_sql(query).wait()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    quiet.add_arguments(parser)
    args = parser.parse_args()
    quiet.wait_as_told(args)
    from flink_jobs.pipeline import event_time_case_sql, event_time_sql
    from flink_jobs.testing import sql_batch_environment

    t_env = sql_batch_environment()
    # datagen is paced at 10,000 rows/s unless told otherwise: the table sets the pace out of the way
    t_env.execute_sql(f"CREATE TEMPORARY TABLE seq (n BIGINT) WITH ('connector' = 'datagen', "
                      f"'number-of-rows' = '{args.records}', 'rows-per-second' = '1000000000', "
                      f"'fields.n.kind' = 'sequence', 'fields.n.start' = '1', 'fields.n.end' = '{args.records}')")
    t_env.execute_sql("CREATE TEMPORARY TABLE sink (shard INT, `value` BYTES, watermark_time TIMESTAMP(3), "
                      "event_time TIMESTAMP(3)) WITH ('connector' = 'blackhole')")
    sides = {"function (IMGSTREAM_EVENT_TIME)": event_time_sql(5_000, kafka_ts_sql="`kafka_ts`"),
             "CASE (before)": event_time_case_sql(5_000, kafka_ts_sql="`kafka_ts`")}
    for sql in sides.values():
        run(t_env, min(args.records, 200_000), sql)  # warm-up: JIT, classes
    best = {name: float("inf") for name in sides}
    for round_ in range(args.rounds):
        for name, sql in sides.items():
            took = run(t_env, args.records, sql)
            best[name] = min(best[name], took)
            print(f"round {round_ + 1}: {name:32} {took:6.2f} s = {took / args.records * 1e6:5.2f} us/record")
    new, old = best.values()
    print(f"best: function {new:.2f} s, CASE {old:.2f} s for {args.records:,} records: "
          f"{(old - new) / args.records * 1e6:.2f} us less per record; function / CASE = {new / old:.2f}")


if __name__ == "__main__":
    main()
