"""Launching batch jobs: the local spark-submit command, the EMR Serverless request validated
against botocore's own model, the CLI wiring, and the derivatives job's pure transforms."""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import timedelta
from pathlib import Path

import pytest

from batch import cli, submit
from batch.config import BatchConfig, parse_duration
from batch.derivatives import Outcome, classify, next_offsets, summarise
from imgstream.domain.derivatives import DEFAULT_LADDER, Ladder, Preset

TARGET = submit.EmrTarget(application_id="00fabc123def4567", role_arn="arn:aws:iam::123456789012:role/imgstream-batch",
                          artifacts_uri="s3://artifacts/imgstream/batch/", log_uri="s3://artifacts/imgstream/logs/",
                          env={"IMGSTREAM_KAFKA_BOOTSTRAP": "b-1.msk:9092", "IMGSTREAM_S3_SECRET_KEY": "hunter2",
                               "IMGSTREAM_PG_DSN": "postgresql://u:pw@h/db", "HOME": "/root"})


def test_emr_request_is_valid_for_botocore_and_complete() -> None:
    request = submit.emr_request(["gc", "--apply", "--grace", "3d"], TARGET)
    submit.validate("StartJobRun", request)  # raises on any shape error
    driver = request["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == "s3://artifacts/imgstream/batch/main.py"
    assert driver["entryPointArguments"] == ["gc", "--apply", "--grace", "3d"]
    params = shlex.split(driver["sparkSubmitParameters"])
    confs = dict(p.split("=", 1) for p in params[1::2] if "=" in p and params[params.index(p) - 1] == "--conf")
    assert confs["spark.archives"] == "s3://artifacts/imgstream/batch/imgstream-venv.tar.gz#environment"
    assert confs["spark.emr-serverless.driverEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert confs["spark.executorEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert confs["spark.emr-serverless.driverEnv.IMGSTREAM_KAFKA_BOOTSTRAP"] == "b-1.msk:9092"
    assert "hunter2" not in driver["sparkSubmitParameters"] and "pw@h" not in driver["sparkSubmitParameters"]
    jars = params[params.index("--jars") + 1].split(",")
    assert any("spark-sql-kafka-0-10_2.13" in j for j in jars)
    assert params[params.index("--py-files") + 1].endswith("imgstream-code.zip")
    logs = request["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"]
    assert logs["logUri"] == "s3://artifacts/imgstream/logs/"


def test_botocore_validation_catches_a_broken_request() -> None:
    request = submit.emr_request(["derivatives"], TARGET)
    del request["executionRoleArn"]
    request["jobDriver"]["sparkSubmit"]["entryPointArguments"] = "derivatives"  # not a list
    with pytest.raises(ValueError, match="executionRoleArn"):
        submit.validate("StartJobRun", request)


def test_application_request_targets_spark_4() -> None:
    request = submit.application_request()
    submit.validate("CreateApplication", request)
    assert request["releaseLabel"] == "emr-spark-8.0.0" and request["type"] == "SPARK"


def test_local_command_uses_venv_jars_and_entry_point(tmp_path: Path) -> None:
    (tmp_path / "spark").mkdir()
    for name in ("spark-sql-kafka-0-10_2.13-4.1.1.jar", "kafka-clients-3.9.1.jar"):
        (tmp_path / "spark" / name).write_bytes(b"")
    cmd = submit.local_command(["derivatives", "--backfill"], venv=Path("/v"), lib=tmp_path)
    assert cmd[:3] == ["/v/bin/spark-submit", "--master", "local[2]"]
    assert cmd[-3:] == [str(submit.ENTRY_POINT), "derivatives", "--backfill"]
    assert "spark.pyspark.python=/v/bin/python" in cmd
    jars = cmd[cmd.index("--jars") + 1].split(",")
    assert sorted(Path(j).name for j in jars) == ["kafka-clients-3.9.1.jar", "spark-sql-kafka-0-10_2.13-4.1.1.jar"]
    env = submit.local_env({"IMGSTREAM_S3_BUCKET": "b"}, Path("/v"), base={"PATH": "/usr/bin"})
    assert env["PATH"].startswith("/v/bin:") and env["PYTHONPATH"].startswith(str(submit.REPO))
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_local_command_refuses_without_the_kafka_jar(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make jars"):
        submit.local_command(["derivatives"], venv=Path("/v"), lib=tmp_path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgstream")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_rebuilds_job_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "_run_local", lambda args: seen.append([args.job, *args.job_argv]) or 0)
    for argv in (["batch", "gc", "--apply", "--grace", "0s"], ["batch", "gc"], ["batch", "derivatives", "--backfill"],
                 ["batch", "reconcile"]):
        args = _parser().parse_args(argv)
        assert args.handler(args) == 0
    assert seen == [["gc", "--apply", "--grace", "0s"], ["gc", "--dry-run", "--grace", "259200s"],
                    ["derivatives", "--backfill"], ["reconcile", "--grace", "600s"]]


def test_cli_submit_dry_run_prints_a_valid_request(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["batch", "submit", "gc", "--emr", "--application-id", "00fabc123def4567",
                                 "--role-arn", "arn:aws:iam::123456789012:role/r", "--dry-run", "--job-args=--apply"])
    assert args.handler(args) == 0
    request = json.loads(capsys.readouterr().out)
    submit.validate("StartJobRun", request)
    assert request["jobDriver"]["sparkSubmit"]["entryPointArguments"] == ["gc", "--apply"]


def test_cli_submit_checks_the_job_options_first() -> None:
    args = _parser().parse_args(["batch", "submit", "gc", "--emr", "--application-id", "a", "--role-arn", "r",
                                 "--dry-run", "--job-args=--grace soon"])
    with pytest.raises(SystemExit):
        args.handler(args)


@pytest.mark.parametrize("text,expected", [("0s", timedelta(0)), ("90", timedelta(seconds=90)),
                                           ("15m", timedelta(minutes=15)), ("3d", timedelta(days=3))])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_config_reads_a_ladder_from_env() -> None:
    env = {"IMGSTREAM_S3_ACCESS_KEY": "a", "IMGSTREAM_S3_SECRET_KEY": "b"}
    assert BatchConfig.from_env(env).ladder == DEFAULT_LADDER
    custom = Ladder("l2", (Preset("thumb", 320, ("avif",)),))
    assert BatchConfig.from_env({**env, "IMGSTREAM_BATCH_LADDER": custom.to_json()}).ladder == custom


def test_status_classes() -> None:
    assert [classify(s) for s in ("accepted", "duplicate", "rejected", "deleted", None)] == \
        ["work", "work", "skip", "skip", "pending"]


def test_pending_events_hold_back_their_partition() -> None:
    assert next_offsets({0: 5}, {0: 10, 1: 7, 2: 3}, [(1, 4), (1, 6)]) == {0: 10, 1: 4, 2: 3}


def test_summary_counts() -> None:
    outcomes = [Outcome("created", "a", ("i1", "i2"), created=6, bytes=100),
                Outcome("complete", "b", ("i3",)),
                Outcome("failed", "c", ("i4",), code="object_missing", reason="gone"),
                Outcome("skip", "d", ("i5",)), Outcome("pending", "e", ("i6",), partition=0, offset=1)]
    s = summarise(outcomes, run="r", mode="incremental", read=9)
    assert {k: s[k] for k in ("processed", "created", "skipped", "failed", "pending", "reused", "contents")} == \
        {"processed": 6, "created": 6, "skipped": 2, "failed": 1, "pending": 1, "reused": 2, "contents": 3}
    assert s["failures"] == [{"sha256": "c", "image_ids": ["i4"], "code": "object_missing", "reason": "gone"}]
