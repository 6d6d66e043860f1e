"""After a crash the pipeline resumes from its newest completed checkpoint or savepoint, never
silently empty (issue 16, items 1, 3 and 7), without a Flink cluster: the state folder is a
temporary directory and the cluster's REST calls and the CLI are replaced by fakes."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from flink_jobs import restore, submit
from imgstream.filelock import exclusive

NAME = "imgstream-pipeline"
JOB_A, JOB_B, JOB_C, TEST_JOB = "a" * 32, "b" * 32, "c" * 32, "d" * 32


def _point(path: Path, mtime: float, complete: bool = True) -> Path:
    path.mkdir(parents=True)
    if complete:
        (path / restore.METADATA).write_bytes(b"\x00meta")
        os.utime(path / restore.METADATA, (mtime, mtime))
    return path


@pytest.fixture()
def state(tmp_path):
    return restore.StackState(tmp_path / ".stack")


def test_the_newest_completed_point_of_the_pipelines_jobs_wins(state):
    reg = state.registry
    reg.record(JOB_A, NAME)
    reg.record(TEST_JOB, "it-pipeline-1234")
    reg.record(JOB_B, NAME)
    _point(state.checkpoints / JOB_A / "chk-3", 1_000)
    _point(state.checkpoints / JOB_A / "chk-4", 9_000, complete=False)  # cut off by the crash
    _point(state.checkpoints / TEST_JOB / "chk-9", 8_000)  # another job's, with the same operators
    savepoint = _point(state.savepoints / f"savepoint-{JOB_A[:6]}-0123456789ab", 2_000)
    assert restore.latest_restore_point(state, NAME).path == savepoint
    newest = _point(state.checkpoints / JOB_B / "chk-12", 3_000)  # the job resumed from it, later
    point = restore.latest_restore_point(state, NAME)
    assert (point.path, point.kind) == (newest, "checkpoint")
    reg.reset()  # make flink-reset: none of them is to be resumed
    assert restore.latest_restore_point(state, NAME) is None
    reg.record(JOB_C, NAME)
    assert restore.latest_restore_point(state, NAME) is None


@pytest.fixture()
def cluster(state, monkeypatch):
    """A fake session cluster: running jobs by name, submissions recorded."""
    fake = type("Cluster", (), {})()
    fake.running, fake.submitted, fake.fail_resume = {}, [], None

    def flink_run(job, name, args, env, savepoint):
        if savepoint and fake.fail_resume:
            raise SystemExit(fake.fail_resume)
        job_id = f"{len(fake.submitted):032x}"
        fake.submitted.append((name, savepoint, list(args)))
        fake.running[name] = job_id
        return job_id

    monkeypatch.setattr(submit, "running_jobs", lambda env: dict(fake.running))
    monkeypatch.setattr(submit, "_flink_run", flink_run)
    monkeypatch.setattr(submit, "wait_initialised", lambda job_id, env: None)
    fake.env = {"IMGSTREAM_STACK_DIR": str(state.root)}
    return fake


def test_after_a_jobmanager_crash_up_resumes_from_the_newest_checkpoint(state, cluster):
    state.registry.record(JOB_A, NAME)
    _point(state.checkpoints / JOB_A / "chk-7", 1_000)
    newest = _point(state.checkpoints / JOB_A / "chk-8", 2_000)
    submit.up([], cluster.env)
    assert cluster.submitted == [(NAME, str(newest), [])]
    submit.up([], cluster.env)  # running now: left alone
    assert len(cluster.submitted) == 1


def test_a_savepoint_noted_by_make_down_is_used_when_it_is_the_newest(state, cluster):
    state.registry.record(JOB_A, NAME)
    _point(state.checkpoints / JOB_A / "chk-7", 1_000)
    saved = _point(state.savepoints / "savepoint-aaaaaa-000000000001", 5_000)
    state.run.mkdir(parents=True)
    state.note.write_text(f"file:{saved}\n")
    submit.up([], cluster.env)
    assert cluster.submitted[0][1] == str(saved)
    assert not state.note.exists()


def test_up_refuses_to_start_empty_when_the_pipeline_ran_but_nothing_is_left(state, cluster):
    state.registry.record(JOB_A, NAME)
    with pytest.raises(submit.Refused, match="make flink-reset"):
        submit.up([], cluster.env)
    assert cluster.submitted == []


def test_a_failed_resume_is_refused_not_replaced_by_an_empty_job(state, cluster):
    state.registry.record(JOB_A, NAME)
    _point(state.checkpoints / JOB_A / "chk-7", 1_000)
    cluster.fail_resume = "Cannot map checkpoint/savepoint state for operator 1234 to the new program"
    with pytest.raises(submit.Refused) as refused:
        submit.up([], cluster.env)
    assert "make flink-reset" in str(refused.value) and "Cannot map" in str(refused.value)
    assert cluster.submitted == []  # no fresh, empty job


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(state, cluster, monkeypatch):
    state.registry.record(JOB_A, NAME)
    older = _point(state.checkpoints / JOB_A / "chk-7", 1_000)
    newest = _point(state.checkpoints / JOB_A / "chk-8", 2_000)
    flink_run = submit._flink_run

    def truncated_newest(job, name, args, env, savepoint):
        if savepoint == str(newest):
            raise SystemExit("java.io.EOFException while reading the checkpoint metadata")
        return flink_run(job, name, args, env, savepoint)

    monkeypatch.setattr(submit, "_flink_run", truncated_newest)
    submit.up([], cluster.env)
    assert [s for _, s, _ in cluster.submitted] == [str(older)]


def test_the_first_start_is_fresh_and_a_reset_starts_empty_from_the_earliest_offset(state, cluster, capsys):
    submit.up([], cluster.env)
    assert cluster.submitted == [(NAME, None, [])]
    assert state.registry.job_ids(NAME) == ["0" * 32]
    with pytest.raises(submit.Refused, match="running"):
        submit.reset([], cluster.env)
    cluster.running.clear()
    capsys.readouterr()
    submit.reset([], cluster.env)
    warning = capsys.readouterr().out
    assert "WARNING" in warning and "EMPTY" in warning
    assert cluster.submitted[-1] == (NAME, None, ["--startup_mode=earliest-offset", "--recheck_written=1"])
    assert state.registry.job_ids(NAME) == [f"{1:032x}"]  # the jobs before the reset are forgotten


def test_two_submitters_at_once_start_one_job(state, cluster, monkeypatch):
    """Both check for a running job; without the lock both see none and both submit."""
    checked = threading.Barrier(2, timeout=3)
    plain = submit.running_jobs

    def running_jobs(env):
        jobs = plain(env)
        try:
            checked.wait()  # hold the first checker until the second one checked too ...
        except threading.BrokenBarrierError:
            pass  # ... which never comes while the first holds the submit lock
        return jobs

    monkeypatch.setattr(submit, "running_jobs", running_jobs)
    threads = [threading.Thread(target=submit.run, args=("pipeline", [], cluster.env)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(cluster.submitted) == 1


def test_a_second_stack_up_waits_for_the_first(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "local-stack"))
    import component
    import stackctl

    stack = object.__new__(stackctl.Stack)  # no context needed: _up is replaced
    stack.paths = component.Paths.for_repo(tmp_path)
    ran = []
    monkeypatch.setattr(stackctl.Stack, "_up", lambda self, names=None: ran.append(names) or 0)
    real_exclusive = stackctl_exclusive = exclusive

    def short(lock_file, what, timeout_s=0.6):
        return real_exclusive(lock_file, what, timeout_s=0.6)

    import imgstream.filelock

    monkeypatch.setattr(imgstream.filelock, "exclusive", short)
    with stackctl_exclusive(stack.paths.run / stackctl.UP_LOCK, "first up"):
        with pytest.raises(TimeoutError, match="make up"):
            stack.up()
    assert ran == [] and "waiting for another `make up`" in capsys.readouterr().out
    assert stack.up() == 0 and ran == [None]  # free again once the first one is done


def test_make_up_fails_with_the_whole_refusal(tmp_path, monkeypatch):
    """The stack's step shows why the pipeline was not started and what to do (item 3)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "local-stack"))
    import subprocess

    import component
    from components import pipeline

    refusal = ("REFUSED: imgstream-pipeline could not resume:\n  checkpoint /x/chk-3: Cannot map state\n"
               f"It was NOT started with empty state. ... or run `{submit.RESET_COMMAND}` to start it EMPTY.")
    monkeypatch.setattr(pipeline, "_submit", lambda ctx, *args: subprocess.CompletedProcess(
        args, 1, "resuming imgstream-pipeline from checkpoint /x/chk-3\n", f"Traceback ...\n{refusal}\n"))
    ctx = component.Context(paths=component.Paths.for_repo(tmp_path), s3_secret="s", java="/bin/true")
    with pytest.raises(RuntimeError) as failed:
        pipeline._submit_sync(ctx)
    assert "Cannot map" in str(failed.value) and "make flink-reset" in str(failed.value)


def test_program_arguments_reach_the_program_not_the_flink_cli(tmp_path, monkeypatch):
    """`flink run` takes a leading program argument that is also one of its own options as its
    own: `--parallelism=2` became the CLI's `-p 2` and the program, not told, set parallelism 1
    over it. Program arguments go after "--", where the CLI stops reading options."""
    jar = tmp_path / "kafka.jar"
    jar.write_bytes(b"PK")
    seen: list[list[str]] = []

    def fake_run(command, **kwargs):
        seen.append(list(command))
        return type("Done", (), {"stdout": f"Job has been submitted with JobID {JOB_A}\n", "stderr": ""})()

    monkeypatch.setattr(submit.subprocess, "run", fake_run)
    args = ["--parallelism=2", "--detached=false", "--window_ms=60000"]
    assert submit._flink_run("pipeline", NAME, args, {"IMGSTREAM_FLINK_KAFKA_JAR": str(jar)}, "/sp/1") == JOB_A
    command = seen[0]
    cut = command.index("--")
    assert command[cut + 1:] == args
    assert ["-s", "/sp/1"] == command[command.index("-s"):command.index("-s") + 2] and command.index("-s") < cut
    assert command.index("-pym") < cut and command.index("-pyfs") < cut
