"""Clock skew in the pipeline (issue 16, item 5): the source's SQL event time (the watermark's)
and the cleaning step's event time (the windows') are both bounded by the Kafka append time."""

import json

import pytest

from flink_jobs.functions import Cleaner
from imgstream.domain.events import format_time
from imgstream.domain.windows import from_millis
from flink_jobs.testing import sql_batch_environment
from tests.fixtures.flink_fakes import FakeMetrics

HOUR = 3_600_000
APPENDED = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class FakeRuntime:
    def __init__(self):
        self.metrics = FakeMetrics()

    def get_metrics_group(self):
        return self.metrics

    def get_job_parameter(self, key, default):
        return default


def _event(received_ms, n=1):
    return json.dumps({
        "schema_version": 1, "event_type": "image.uploaded", "image_id": f"00000000-0000-4000-8000-{n:012d}",
        "producer": "alice", "sha256": f"{n:064x}", "phash": f"{n:016x}", "size": 10, "content_type": "image/png",
        "width": 1, "height": 1, "storage_key": f"sha256/00/{n:064x}", "received_at": format_time(from_millis(received_ms)),
        "gateway": "gw-fast",
    }).encode()  # fmt: skip


def _clean(fn, value, appended):
    return list(fn.outputs(value, 0, 7, appended))


def test_an_event_from_a_clock_hours_ahead_takes_the_append_time_and_is_counted():
    fn, runtime = Cleaner("images.uploaded", 5_000), FakeRuntime()
    fn.open(runtime)
    out = _clean(fn, _event(APPENDED + 3 * HOUR), APPENDED)
    if len(out) != 1 or not isinstance(out[0], dict) or "event_time" not in out[0]:
        pytest.fail(f"not cleaned: {out}")
    assert out[0]["event_time"] == APPENDED
    assert runtime.metrics.counters["clockSkewClamped"].count == 1
    assert runtime.metrics.gauges["clockSkewMaxMs"]() == 3 * HOUR
    # an honest clock (stamped before the append) keeps its time and is not counted
    (honest,) = _clean(fn, _event(APPENDED - 1_200, 2), APPENDED)
    assert honest["event_time"] == APPENDED - 1_200
    assert runtime.metrics.counters["clockSkewClamped"].count == 1


def _literal(text):
    return "CAST(NULL AS STRING)" if text is None else "'" + text.replace("'", "''") + "'"


@pytest.mark.slow
def test_the_source_sql_bounds_received_at_by_the_kafka_timestamp():
    """The SQL expression the Kafka source builds its watermark from, run by Flink."""
    from flink_jobs.pipeline import event_time_sql

    t_env = sql_batch_environment()
    cases = {  # received_at -> expected event time, all appended at 2026-01-01 00:00:00.000
        "2026-01-01T03:00:00.000Z": "2026-01-01 00:00:00",  # 3 h ahead: the append time
        "2026-01-01T00:00:05.000Z": "2026-01-01 00:00:05",  # within the tolerance: kept
        "2026-01-01T00:00:05.001Z": "2026-01-01 00:00:00",  # 1 ms past it: the append time
        "2025-12-31T23:59:58.800Z": "2025-12-31 23:59:58.800",  # behind: kept
    }
    values = ", ".join(
        f"('{json.dumps({'received_at': r})}', TIMESTAMP '2026-01-01 00:00:00.000')" for r in cases
    ) + ", ('{}', TIMESTAMP '2026-01-01 00:00:00.000')"  # no received_at: the Kafka timestamp
    query = (f"SELECT CAST({event_time_sql(5_000, kafka_ts_sql='`kafka_ts`')} AS STRING) "
             f"FROM (VALUES {values}) AS t(`value`, `kafka_ts`)")
    with t_env.execute_sql(query).collect() as rows:
        got = [row[0] for row in rows]
    expected = list(cases.values()) + ["2026-01-01 00:00:00"]
    assert [g.rstrip("0").rstrip(".") if "." in g else g for g in got] == [
        e.rstrip("0").rstrip(".") if "." in e else e for e in expected
    ]


#: Values of ``received_at`` (and whole records) that the JSON or the timestamp parser may read
#: differently: formats, precisions, zones, escapes, types, duplicates, broken JSON.
_HOSTILE_RECORDS = [
    *(json.dumps({"received_at": r}) for r in [
        "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:01.1Z", "2026-01-01T00:00:01.12Z",
        "2026-01-01T00:00:01.1234Z", "2026-01-01T00:00:01.000", "2026-01-01 00:00:01.000", "2026-01-01T00:00:01.000+01:00",
        "2026-01-01t00:00:01.000z", " 2026-01-01T00:00:01.000Z", "2026-01-01T00:00:01.000Z ", "2026-01-01",
        "2026-02-30T00:00:00.000Z", "2026-01-01T24:00:00.000Z", "2026-01-01T00:00:60.000Z", "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z", "-2026-01-01T00:00:00.000Z", "2026-1-1T0:0:1.000Z", "T2026-01-01T00:00:01.000ZZ",
        "", "null", "2026-01-01T00:00:05.000Z", "2026-01-01T00:00:05.001Z", "2025-12-31T23:59:59.999Z",
        "2026\u002d01-01T00:00:01.000Z", "２０２６-01-01T00:00:01.000Z", "2026-01-01T00:00:01.000Z" + "x" * 5000,
    ]),
    *(json.dumps({"received_at": r}) for r in [20260101, 1.5, True, None, {"at": "2026-01-01T00:00:01.000Z"},
                                               ["2026-01-01T00:00:01.000Z"]]),
    '{"received_at": "2026-01-01T00:00:01.000Z", "received_at": "2026-01-01T09:00:00.000Z"}',
    '{"received_at": "2026-01-01T09:00:00.000Z", "received_at": "2026-01-01T00:00:01.000Z"}',
    '{"received_at": "2026-01-01T00:00:\u0030\u0031.000\u005a"}',
    '{"nested": {"received_at": "2026-01-01T00:00:01.000Z"}}',
    '{"received_at": "2026-01-01T00:00:01.000Z"', "not json", "", "[]", "null", '"2026-01-01T00:00:01.000Z"',
    "{'received_at': '2026-01-01T00:00:01.000Z'}", '{"RECEIVED_AT": "2026-01-01T00:00:01.000Z"}',
    None,
]


@pytest.mark.slow
def test_the_event_time_function_reads_every_record_as_the_sql_it_replaced():
    """``IMGSTREAM_EVENT_TIME`` equals the ``CASE`` of ``JSON_VALUE``/``TO_TIMESTAMP`` it replaced
    on hostile records, with and without a Kafka timestamp, both run by Flink."""
    from flink_jobs.pipeline import event_time_case_sql, event_time_sql

    t_env = sql_batch_environment()
    reference = event_time_case_sql(5_000, kafka_ts_sql="`kafka_ts`")
    stamps = ["TIMESTAMP '2026-01-01 00:00:00.000'", "CAST(NULL AS TIMESTAMP(3))"]
    values = ", ".join(f"({i}, {_literal(record)}, {stamp})" for i, record in enumerate(_HOSTILE_RECORDS) for stamp in stamps)
    query = (f"SELECT n, CAST({reference} AS STRING), CAST({event_time_sql(5_000, kafka_ts_sql='`kafka_ts`')} AS STRING) "
             f"FROM (VALUES {values}) AS t(n, `value`, `kafka_ts`)")
    with t_env.execute_sql(query).collect() as rows:
        got = [(row[0], row[1], row[2]) for row in rows]
    assert len(got) == 2 * len(_HOSTILE_RECORDS)
    differ = [(_HOSTILE_RECORDS[n], old, new) for n, old, new in got if old != new]
    assert not differ, differ
    # the cases are not all alike: some keep received_at, some take the Kafka time, some are NULL
    assert {"2026-01-01 00:00:01.000", "2026-01-01 00:00:00.000", None} <= {old for _, old, _ in got}
