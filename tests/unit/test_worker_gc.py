"""The Python workers' garbage-collection schedule (flink_jobs/worker_gc.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flink_jobs import worker_gc
from flink_jobs.config import PipelineConfig
from flink_jobs.worker_gc import JOB_PARAMETER, GcSchedule, ScheduledCollector

REPO = Path(__file__).resolve().parents[2]


class FakeGc:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 3

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Context:
    """The part of PyFlink's RuntimeContext that install reads."""

    def __init__(self, parameters: dict[str, str]) -> None:
        self.parameters = parameters

    def get_job_parameter(self, key: str, default: str) -> str:
        return self.parameters.get(key, default)


def test_the_schedule_travels_as_a_job_parameter() -> None:
    schedule = GcSchedule(30, 600)
    assert GcSchedule.from_parameter(schedule.to_parameter()) == schedule
    assert GcSchedule.from_parameter("0,0").automatic


@pytest.mark.parametrize("text", ["", "60", "a,b", "60,", "-1,10", "60,10", "60;600"])
def test_a_bad_parameter_names_itself(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        GcSchedule.from_parameter(text)
    assert JOB_PARAMETER in str(raised.value) and repr(text) in str(raised.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--python_gc_young_every_s=-5"], ">= 0"),
        (["--python_gc_young_every_s=120", "--python_gc_full_every_s=60"], "at least python_gc_young_every_s"),
        (["--python_gc_full_every_s=soon"], "not a whole number"),
    ],
)
def test_the_job_refuses_bad_intervals_at_start(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_env({}, args)


def test_the_job_config_carries_the_schedule() -> None:
    config = PipelineConfig.from_env({}, ["--python_gc_young_every_s=30", "--python_gc_full_every_s=900"])
    assert config.gc_schedule() == GcSchedule(30, 900)
    assert PipelineConfig.from_env({}).gc_schedule() == GcSchedule(worker_gc.YOUNG_EVERY_S, worker_gc.FULL_EVERY_S)


def test_young_collections_freeze_what_survived_and_full_ones_thaw_it_first() -> None:
    fake, clock = FakeGc(), Clock()
    collector = ScheduledCollector(GcSchedule(60, 300), fake, clock)
    kinds = []
    for _ in range(6):
        clock.now += 60
        kinds.append(collector.due())
    assert kinds == ["young", "young", "young", "young", "full", "young"]
    assert fake.calls[:2] == ["collect", "freeze"]
    full = fake.calls[8:11]
    assert full == ["unfreeze", "collect", "freeze"]
    assert fake.calls.count("unfreeze") == 1
    assert (collector.stats.young, collector.stats.full, collector.stats.freed) == (5, 1, 18)


def test_without_the_parameter_a_process_keeps_cpythons_collector() -> None:
    enabled = gc.isenabled()
    assert worker_gc.install(Context({})) is None
    assert worker_gc.install(Context({JOB_PARAMETER: "0,0"})) is None
    assert gc.isenabled() == enabled


def test_a_worker_under_the_schedule_still_frees_reference_cycles() -> None:
    """In a process of its own (the schedule is process-wide): a cycle that dies young goes at
    the next young collection; one frozen while alive goes at the next full collection."""
    script = textwrap.dedent(
        """
        import gc, time, weakref
        from flink_jobs import worker_gc

        class Node:
            pass

        def cycle():
            a, b = Node(), Node()
            a.other, b.other = b, a
            return a, weakref.ref(a)

        def freed_within(ref, seconds):
            deadline = time.monotonic() + seconds
            while ref() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            return ref() is None

        scheduled = worker_gc.install(type("Ctx", (), {"get_job_parameter": lambda self, k, d: "1,3"})())
        assert scheduled is worker_gc.install(type("Ctx", (), {"get_job_parameter": lambda self, k, d: "1,3"})())
        assert not gc.isenabled()
        node, young = cycle()
        del node
        assert freed_within(young, 10), "a young cycle survived"
        node, old = cycle()
        deadline = time.monotonic() + 10
        while scheduled.stats.young < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # frozen by a young collection while alive
        del node
        assert old() is not None, "a frozen cycle went before a full collection"
        assert freed_within(old, 10), "a frozen cycle survived the full collection"
        assert scheduled.stats.full >= 1
        print("ok", scheduled.stats.young, scheduled.stats.full)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
