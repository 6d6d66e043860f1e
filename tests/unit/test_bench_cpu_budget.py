"""bench/cpu_budget: CPU is charged to the component whose process (group, descendants) used it."""

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from bench.cpu_budget import WRITERS, GROUPS, CpuMeter, grouped, metered, procs, report, used_between, writer_share
from imgstream.polling import until_sync

# a component like postgres: the leader burns CPU, and so does a child in a session of its own
BURNER = """
import signal, subprocess, sys, time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end: pass
child = subprocess.Popen([sys.executable, "-c", "import signal, time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass\\nsignal.pause()"], start_new_session=True)
print(child.pid, flush=True)
burn(0.4)
signal.pause()  # until the test kills it
"""


def _burner(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", BURNER], start_new_session=True, stdout=subprocess.PIPE, text=True)
    procs.PidFiles(run_dir).write("postgres", proc.pid)
    (run_dir / "cassandra.pid").write_text(f"{proc.pid} 1\n")  # a recycled pid: another start time
    return proc


def test_leader_and_descendants_are_charged_and_a_gone_child_keeps_its_share(tmp_path):
    proc = _burner(tmp_path)
    child = None
    try:
        meter = CpuMeter(tmp_path)
        meter.sample()
        child = int(proc.stdout.readline())

        def burnt() -> bool:
            meter.sample()
            used = meter.used()
            return used.get("postgres", 0) >= 0.25 and used.get("postgres children", 0) >= 0.35

        until_sync(burnt, lambda: f"the leader and its child were charged: {meter.used()}", timeout=30, interval=0.05)
        before = meter.used()["postgres children"]
        os.kill(child, signal.SIGKILL)
        until_sync(lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z",
                   "the child to die", timeout=30, interval=0.05)
        meter.sample()
        assert meter.used()["postgres children"] >= before  # what the gone child used still counts
        assert set(meter.used()) == {"postgres", "postgres children"}  # the stale pid file charged nothing
    finally:
        if child is not None:
            subprocess.run(["kill", "-9", str(child)], stderr=subprocess.DEVNULL)
        proc.kill()
        proc.wait()


def test_metered_samples_while_the_block_runs(tmp_path):
    proc = _burner(tmp_path)
    child = None

    async def run():
        async with metered(tmp_path, every_s=0.05) as meter:
            await asyncio.sleep(0.3)
        return meter

    try:
        child = int(proc.stdout.readline())
        meter = asyncio.run(run())
        assert meter.used().get("postgres", 0) > 0
    finally:
        if child is not None:
            subprocess.run(["kill", "-9", str(child)], stderr=subprocess.DEVNULL)
        proc.kill()
        proc.wait()


def test_report_per_event():
    used = {"kafka": 2.0, "connect": 1.0, "postgres children": 0.5, "flink-taskmanager": 1.0, "flink-taskmanager children": 3.0}
    by_group = grouped(used)
    assert by_group["cdc+connect+pg"] == 1.5 and by_group["cassandra"] == 0
    assert by_group["flink tm (jvm)"] == 1.0 and by_group["flink python"] == 3.0
    header, line = report({"pipeline": (1000, used)})
    assert header.split()[:2] == ["CPU", "ms/event"] and header.split()[-1] == "total"
    values = [float(v) for v in line.split()[1:]]
    assert len(values) == len(GROUPS) + 1
    assert values[list(GROUPS).index("kafka")] == 2.0 and values[list(GROUPS).index("cdc+connect+pg")] == 1.5
    assert values[-1] == 7.5


def test_used_between_interpolates_between_samples():
    timeline = [(10.0, {"kafka": 0.0}), (12.0, {"kafka": 2.0, "cassandra": 1.0}), (14.0, {"kafka": 6.0, "cassandra": 1.0})]
    assert used_between(timeline, 10.0, 14.0) == {"kafka": 6.0, "cassandra": 1.0}
    # 11 -> 13: kafka 1.0 -> 4.0; cassandra appeared at 12 (0 before it), half of it by 11
    between = used_between(timeline, 11.0, 13.0)
    assert between["kafka"] == 3.0 and between["cassandra"] == 0.5
    assert used_between(timeline, 12.0, 12.0) == {"kafka": 0.0, "cassandra": 0.0}


def test_used_between_refuses_moments_outside_the_samples():
    timeline = [(10.0, {"kafka": 0.0}), (12.0, {"kafka": 2.0})]
    for start, end in ((9.0, 11.0), (11.0, 13.0), (11.5, 11.0)):
        with pytest.raises(ValueError):
            used_between(timeline, start, end)
    with pytest.raises(ValueError):
        used_between([], 0.0, 0.0)


# a TaskManager: two workers that burn CPU, one of them connected to the Cassandra port first
TASKMANAGER = """
import subprocess, sys
burn = "import time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass\\n"
connect = "import socket, sys\\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\\n"
workers = [subprocess.Popen([sys.executable, "-c", connect + burn + "import signal\\nsignal.pause()", sys.argv[1]]),
           subprocess.Popen([sys.executable, "-c", burn + "import signal\\nsignal.pause()"])]
print(*(w.pid for w in workers), flush=True)
import signal
signal.pause()
"""


def test_taskmanager_workers_connected_to_cassandra_are_the_writers_share_of_flink_python(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    tm = subprocess.Popen([sys.executable, "-c", TASKMANAGER, str(port)], start_new_session=True,
                          stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        procs.PidFiles(tmp_path).write("flink-taskmanager", tm.pid)
        workers = [int(pid) for pid in tm.stdout.readline().split()]
        meter = CpuMeter(tmp_path, writer_port=port)

        def burnt() -> bool:
            meter.sample()
            used = meter.used()
            return used.get(WRITERS, 0) >= 0.3 and used.get("flink-taskmanager children", 0) >= 0.3

        until_sync(burnt, lambda: f"both workers were charged apart: {meter.used()}", timeout=30, interval=0.05)
        used = meter.used()
        assert grouped(used)["flink python"] == pytest.approx(used[WRITERS] + used["flink-taskmanager children"])
        [line] = writer_share({"run": (1000, used)})
        assert line.startswith("run: flink python = ") and "Cassandra writer's workers" in line
        # without the port, every worker is a child as before
        plain = CpuMeter(tmp_path)
        plain.sample()
        assert WRITERS not in plain.used()
    finally:
        for pid in workers:
            subprocess.run(["kill", "-9", str(pid)], stderr=subprocess.DEVNULL)
        tm.kill()
        tm.wait()
        server.close()


def test_a_writer_stays_a_writer_after_it_closes_its_connection(tmp_path, monkeypatch):
    """A writer closes its Cassandra connection when its job ends, before it exits: what it used
    over the whole run is still the writer's."""
    import bench.cpu_budget as cpu_budget

    key, children = (123, 1), "flink-taskmanager children"
    samples = iter([{key: (children, 0.0)}, {key: (children, 1.0)}, {key: (children, 2.0)}])
    monkeypatch.setattr(cpu_budget, "_members", lambda run_dir: next(samples))
    connections = iter([set(), {123}, set()])  # connected at the second sample only
    monkeypatch.setattr(cpu_budget, "connected_to", lambda port, pids: next(connections) & set(pids))
    meter = CpuMeter(tmp_path, writer_port=9042)
    for _ in range(3):
        meter.sample()
    assert meter.used() == {WRITERS: 2.0}
