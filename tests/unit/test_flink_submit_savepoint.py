"""make flink-savepoint (``flink_jobs.submit.stop_with_savepoint``) against a fake REST API: it
waits for a job's tasks to run before asking Flink for a savepoint, and says in one line why a
savepoint failed."""

from __future__ import annotations

import pytest

from flink_jobs import submit

JOB = "a" * 32
NAME = "imgstream-pipeline"
TRACE = ("java.util.concurrent.CompletionException: x\n\tat a.b(C.java:1)\n"
         "Caused by: org.apache.flink.runtime.checkpoint.CheckpointException: Task source (1/2) is not running\n"
         "\tat d.e(F.java:2)\n")  # fmt: skip


def _job(*statuses: str, state: str = "RUNNING") -> dict:
    return {"state": state, "vertices": [{"name": f"task {i}", "status": s} for i, s in enumerate(statuses)]}


class Rest:
    """Flink's REST API as far as a savepoint uses it: the job's states in turn, then a trigger."""

    def __init__(self, jobs: list[dict], operation: dict) -> None:
        self.jobs, self.operation, self.triggered = jobs, operation, False

    def __call__(self, url: str, method: str = "GET", body: object = None) -> dict:
        if url.endswith("/stop"):
            self.triggered = True
            return {"request-id": "r1"}
        if "/savepoints/" in url:
            return {"status": {"id": "COMPLETED"}, "operation": self.operation}
        return self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0]


@pytest.fixture()
def rest(monkeypatch):
    def install(jobs, operation=None):
        fake = Rest(jobs, operation or {"location": "file:/sp/1"})
        monkeypatch.setattr(submit, "_call", fake)
        monkeypatch.setattr(submit, "running_jobs", lambda env: {NAME: JOB})
        return fake
    return install


def test_tasks_that_keep_a_savepoint_from_being_taken():
    assert submit.tasks_not_running(_job("RUNNING", "FINISHED")) == {}
    assert submit.tasks_not_running(_job("RUNNING", "DEPLOYING", "INITIALIZING")) == {
        "task 1": "DEPLOYING", "task 2": "INITIALIZING"}
    assert submit.tasks_not_running(_job("RUNNING", state="RESTARTING")) == {"(job)": "RESTARTING"}


def test_a_savepoint_waits_until_every_task_runs(rest):
    fake = rest([_job("RUNNING", "DEPLOYING"), _job("RUNNING", "INITIALIZING"), _job("RUNNING", "RUNNING")])
    assert submit.stop_with_savepoint(NAME, {}) == "file:/sp/1"
    assert fake.triggered and len(fake.jobs) == 1


def test_a_job_whose_tasks_never_run_is_refused_by_name_without_a_trigger(rest, monkeypatch):
    monkeypatch.setattr(submit, "TASKS_RUNNING_S", 0.2)
    fake = rest([_job("RUNNING", "DEPLOYING")])
    with pytest.raises(SystemExit, match=r"cannot be savepointed yet.*task 1: DEPLOYING.*make flink-status"):
        submit.stop_with_savepoint(NAME, {})
    assert not fake.triggered


def test_a_failed_savepoint_is_named_by_its_root_cause(rest):
    rest([_job("RUNNING")], {"failure-cause": {"stack-trace": TRACE}})
    with pytest.raises(SystemExit) as failed:
        submit.stop_with_savepoint(NAME, {})
    message = str(failed.value)
    assert "CheckpointException: Task source (1/2) is not running" in message
    assert "\tat " not in message and "\n" not in message
