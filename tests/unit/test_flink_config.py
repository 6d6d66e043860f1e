"""Pure parts of the Flink jobs: config parsing and the rows -> Cassandra writes mapping."""

from datetime import datetime, timezone

import pytest

pytest.importorskip("pyflink")

from flink_jobs.cassandra_sink import STATEMENTS, image_writes, requests, window_writes  # noqa: E402
from flink_jobs.config import PipelineConfig, connector_jars, ops_jar  # noqa: E402
from imgstream.domain.dedup import ProducerPolicy, Scope  # noqa: E402
from imgstream.domain.windows import STAT_FIELDS  # noqa: E402

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)


def test_config_from_env_and_args():
    env = {
        "IMGSTREAM_KAFKA_BOOTSTRAP": "k:1",
        "IMGSTREAM_CASSANDRA_HOSTS": "a,b",
        "IMGSTREAM_FLINK_CHECKPOINT_INTERVAL_MS": "5000",
        "IMGSTREAM_FLINK_DEDUP_POLICY": "*=producer;bob=global,no-near",
    }
    config = PipelineConfig.from_env(env, ["--window_ms=120000", "--job-name=x"])
    assert config.kafka.bootstrap_servers == "k:1" and config.cassandra.hosts == ("a", "b")
    assert (config.checkpoint_interval_ms, config.window_ms, config.job_name) == (5000, 120000, "x")
    policy = config.dedup()
    assert policy.for_producer("alice") == ProducerPolicy(Scope.PRODUCER)
    assert policy.for_producer("bob") == ProducerPolicy(Scope.GLOBAL, near=False)


@pytest.mark.parametrize(
    "argv",
    [["window_ms=1"], ["--dedup_policy=a=nowhere"], ["--window_ms=abc"], ["--python_execution_mode=fork"], ["--python_execution_mode=thread"],
     ["--state_backend=leveldb"], ["--dlq_delivery=maybe"], ["--near_bands=65"], ["--near_bands=1"],
     ["--batch_max_records=0"], ["--batch_max_records=-5"],
     ["--watermark_quantum_ms=0"], ["--watermark_quantum_ms=-200"], ["--watermark_quantum_ms=500"],
     ["--watermark_quantum_ms=2"]],
)  # fmt: skip
def test_config_rejects_bad_input_at_the_entry_point(argv):
    with pytest.raises(ValueError):
        PipelineConfig.from_env({}, argv)


def test_missing_connector_jar_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="flink-sql-connector-kafka"):
        connector_jars(env={"IMGSTREAM_FLINK_LIB": str(tmp_path)})
    jar = tmp_path / "flink-sql-connector-kafka-5.0.0-2.2.jar"
    jar.write_bytes(b"")
    assert connector_jars(env={"IMGSTREAM_FLINK_LIB": str(tmp_path)}) == [jar.as_uri()]


def test_missing_ops_jar_is_named_with_the_command_that_builds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imgstream-flink-ops\.jar.*make jars"):
        ops_jar(env={"IMGSTREAM_FLINK_LIB": str(tmp_path)})
    elsewhere = tmp_path / "other.jar"
    elsewhere.write_bytes(b"")
    assert ops_jar(env={"IMGSTREAM_FLINK_LIB": str(tmp_path), "IMGSTREAM_FLINK_OPS_JAR": str(elsewhere)}) == elsewhere.as_uri()


def test_job_settings_that_keep_the_python_workers_busy():
    from flink_jobs.pipeline import flink_configuration

    conf = flink_configuration(PipelineConfig.from_env({}, ["--parallelism=3"]), jars=[])
    assert conf.get_string("python.fn-execution.bundle.size", "") == "100000"  # PyFlink's is 1,000
    assert conf.get_string("python.fn-execution.bundle.time", "") == "100"  # PyFlink's is 1,000 ms
    assert conf.get_string("pipeline.auto-watermark-interval", "") == "500 ms"
    assert conf.get_string("taskmanager.numberOfTaskSlots", "") == "6"  # a mini-cluster fits both groups
    shared = flink_configuration(PipelineConfig.from_env({}, ["--decide_slot_group="]), jars=[])
    assert shared.get_string("taskmanager.numberOfTaskSlots", "unset") == "unset"


def test_index_state_ttl_never_cleans_in_the_background():
    # heap-backend background cleanup copies the whole one-key index on each state access
    from pyflink.common import Types
    from pyflink.datastream.state import MapStateDescriptor

    from flink_jobs.functions import GC_FACTOR, _ttl

    descriptor = _ttl(MapStateDescriptor("exact", Types.STRING(), Types.PICKLED_BYTE_ARRAY()), 1_000)
    ttl = descriptor._ttl_config
    assert not ttl.get_cleanup_strategies().is_cleanup_in_background()
    assert ttl.get_ttl().to_milliseconds() == 1_000 * GC_FACTOR


def row(**over):
    values = {
        "image_id": "i1", "producer": "p", "sha256": "s", "phash": "00", "size": 10, "content_type": "image/png",
        "width": 1, "height": 2, "storage_key": "k", "received_at": "2026-01-01T00:00:30.000Z",
        "event_time": 1767225630000, "status": "accepted", "duplicate_of": None, "duplicate_kind": None,
        "distance": None, "lateness": "on_time", "watermark": 1767225629000, "reason": None, "error": None,
        "topic": "t", "partition": 0, "offset": 5,
    }  # fmt: skip
    values.update(over)
    return values


def placeholders(name):
    return STATEMENTS[name].count("?")


def test_accepted_image_is_one_whole_row():
    writes = image_writes(row(), 60_000, NOW)
    assert [w[0] for w in writes] == ["image"]
    assert len(writes[0][1]) == placeholders("image")
    assert writes[0][1][9] == datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc)


def test_duplicate_and_too_late_add_their_rows():
    writes = image_writes(
        row(status="duplicate", duplicate_of="o", duplicate_kind="near", distance=3, lateness="too_late",
            watermark=1767225630000 + 3_600_000),
        60_000,
        NOW,
    )  # fmt: skip
    assert [w[0] for w in writes] == ["image", "duplicate", "late_event"]
    for name, params in writes:
        assert len(params) == placeholders(name)
    assert writes[1][1][:4] == ("o", "i1", "near", 3)
    late = writes[2][1]
    assert late[0] == datetime(2026, 1, 1, tzinfo=timezone.utc) and late[-2] == 3_600_000


def test_rejected_row_without_received_at_uses_event_time():
    writes = image_writes(row(status="rejected", received_at=None, reason="not_json"), 60_000, NOW)
    assert writes[0][1][9] == datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc)


def test_window_row_write_is_whole():
    r = {"window_start": 0, "window_end": 60_000, "producer": "p", "content_type": "c", "duplicates": 3,
         "revision": 2, "late_events": 1, "final": True, **{k: 1 for k in STAT_FIELDS}}  # fmt: skip
    [(name, params)] = window_writes(r, 60_000, NOW)
    assert name == "upload_stats" and len(params) == placeholders("upload_stats")
    assert params[-2] is True and params[-1] == NOW


def test_requests_batch_unique_rows_but_send_window_versions_one_by_one_in_order():
    writes = [("image", (i,)) for i in range(5)] + [("upload_stats", ("w", 1)), ("duplicate", ("d",)),
                                                    ("upload_stats", ("w", 2)), ("late_event", ("l",))]  # fmt: skip
    out = requests(writes, batch_size=2)
    assert all(len(r) <= 2 for r in out)
    assert sorted(w for r in out for w in r) == sorted(writes)  # nothing lost or repeated
    stats = [r for r in out if any(w[0] == "upload_stats" for w in r)]
    assert stats == [[("upload_stats", ("w", 1))], [("upload_stats", ("w", 2))]]  # alone, in order
    assert [w for r in out for w in r if w[0] == "image"] == writes[:5]
    assert requests(writes, batch_size=1) == [[w] for w in writes]


def test_writes_retry_timeouts_a_few_times_then_fail():
    from cassandra.policies import RetryPolicy

    from flink_jobs.cassandra_sink import WRITE_RETRIES, retry_policy

    policy = retry_policy()
    assert policy.on_write_timeout(None, "Q", "UNLOGGED_BATCH", 1, 0, 0) == (RetryPolicy.RETRY, "Q")
    assert policy.on_write_timeout(None, "Q", "SIMPLE", 1, 0, WRITE_RETRIES - 1)[0] == RetryPolicy.RETRY
    assert policy.on_write_timeout(None, "Q", "SIMPLE", 1, 0, WRITE_RETRIES) == (RetryPolicy.RETHROW, None)
    assert policy.on_unavailable(None, "Q", 1, 0, 0)[0] == RetryPolicy.RETRY_NEXT_HOST
    assert policy.on_unavailable(None, "Q", 1, 0, WRITE_RETRIES)[0] == RetryPolicy.RETHROW


def test_a_step_is_written_verdicts_first_then_window_versions_in_order():
    from flink_jobs.functions import WriteSteps, step_writes

    window = {"window_start": 0, "window_end": 60_000, "producer": "p", "content_type": "c", "duplicates": 1,
              "late_events": 0, "final": False, **{k: 1 for k in STAT_FIELDS}}  # fmt: skip
    step = {
        "verdicts": [row(), row(image_id="i2", status="duplicate", duplicate_of="i1", duplicate_kind="exact", distance=0)],
        "windows": [{**window, "revision": 1}, {**window, "revision": 2}],
    }
    writes = step_writes(step, 60_000)
    assert [name for name, _ in writes] == ["image", "image", "duplicate", "upload_stats", "upload_stats"]
    assert [params[-4] for name, params in writes if name == "upload_stats"] == [1, 2]  # revisions, in order

    class Recorder:
        def __init__(self):
            self.calls = []

        def write(self, batch):
            self.calls.append([name for name, _ in batch])

    recorder = Recorder()
    assert list(WriteSteps(recorder, 60_000).flat_map(step)) == []  # the rows are the result
    assert recorder.calls == [[name for name, _ in writes]]
    WriteSteps(recorder, 60_000).flat_map({"verdicts": [], "windows": []})
    assert recorder.calls[-1] == []


def test_the_stack_pipeline_runs_at_parallelism_2_unless_told_otherwise():
    from flink_jobs.submit import STACK_PARALLELISM, stack_args

    assert STACK_PARALLELISM == 2
    assert stack_args(["--bounded=1"], {}) == ["--parallelism=2", "--bounded=1"]
    assert stack_args(["--parallelism=4"], {}) == ["--parallelism=4"]
    assert stack_args([], {"IMGSTREAM_FLINK_PARALLELISM": "3"}) == []
    config = PipelineConfig.from_env({}, stack_args([], {}))
    assert (config.parallelism, config.max_parallelism) == (2, 120)
    with pytest.raises(ValueError, match="parallelism"):
        PipelineConfig(parallelism=121)
    with pytest.raises(ValueError, match="near_split_bits"):
        PipelineConfig.from_env({}, ["--near_split_bits=9"])


def test_root_cause_is_the_deepest_caused_by_of_the_cli_output() -> None:
    from flink_jobs.submit import root_cause

    output = """org.apache.flink.client.program.ProgramInvocationException: The main method caused an error
Caused by: java.util.concurrent.CompletionException: java.lang.IllegalStateException: Failed to rollback
\tat org.apache.flink.runtime.scheduler.SchedulerBase.x(SchedulerBase.java:1)
Caused by: java.lang.IllegalStateException: Max parallelism mismatch. Cannot map operator 0fdd with max parallelism 128
\tat org.apache.flink.runtime.checkpoint.Checkpoints.y(Checkpoints.java:2)
Exception: Python process exits with code: 1"""
    cause = root_cause(output)
    assert cause.startswith("java.lang.IllegalStateException: Max parallelism mismatch. Cannot map operator")
    assert root_cause("Exception: Python process exits with code: 1") == ""
    assert len(root_cause("Caused by: " + "x" * 5000)) == 600
