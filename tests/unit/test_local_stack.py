"""The local stack's supervisor pieces, without starting any real service."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgstream.polling import until_sync

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "local-stack"))

import component  # noqa: E402
import procs  # noqa: E402
import stackctl  # noqa: E402
from components import cassandra, connect, kafka, s3proxy  # noqa: E402


def test_render_fills_placeholders_and_refuses_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(component, "TEMPLATES", tmp_path)
    (tmp_path / "t.conf").write_text("port=${port}\nkeep=${file:/x:y}\n")
    out = component.render("t.conf", tmp_path / "out" / "t.conf", {"port": 9092})
    assert out.read_text() == "port=9092\nkeep=${file:/x:y}\n"  # config-provider syntax untouched
    (tmp_path / "bad.conf").write_text("a=${missing}\n")
    with pytest.raises(KeyError, match="missing"):
        component.render("bad.conf", tmp_path / "bad.out", {})


def test_cql_statements_split_and_skip_comments():
    text = "-- a comment\nCREATE TABLE a (x int PRIMARY KEY);\n// another\nCREATE TABLE b (\n  y int PRIMARY KEY\n);\n"
    assert cassandra.cql_statements(text) == ["CREATE TABLE a (x int PRIMARY KEY)", "CREATE TABLE b (\n  y int PRIMARY KEY\n)"]


def test_every_template_renders_with_the_values_the_stack_passes(tmp_path):
    ctx = component.Context(paths=component.Paths.for_repo(tmp_path), s3_secret="s", java="/bin/true")
    (tmp_path / ".stack" / "lib" / "kafka").mkdir(parents=True)
    connect.prepare(ctx)
    cassandra.prepare(ctx)
    s3proxy.prepare(ctx)
    worker = (tmp_path / ".stack" / "conf" / "connect" / "worker.properties").read_text()
    assert "listeners=http://127.0.0.1:8083" in worker
    yaml_text = (tmp_path / ".stack" / "conf" / "cassandra" / "cassandra.yaml").read_text()
    assert "cdc_enabled: true" in yaml_text and "${" not in yaml_text
    assert oct(os.stat(tmp_path / ".stack" / "conf" / "s3" / "s3proxy.conf").st_mode & 0o777) == "0o600"


def test_every_kafka_partition_is_bounded_in_size_not_only_in_time():
    """The CDC topics (~10 KB a row change) grew to 63 GB in a week of benchmarks and filled the
    disk: the broker's template bounds each partition, in segments small enough to delete by."""
    text = (Path(component.TEMPLATES) / "kafka-server.properties").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    retention, segment = int(props["log.retention.bytes"]), int(props["log.segment.bytes"])
    assert 0 < retention <= 4 * 2**30 and segment <= retention // 4


def test_kafka_cluster_id_has_kafka_uuid_shape():
    cid = kafka.kafka_uuid()
    assert len(cid) == 22 and "=" not in cid


def test_kafka_cluster_id_never_starts_with_a_dash():
    # 0xf8 encodes to "-" first: the storage tool would read "-t -..." as an option (a CI run did)
    draws = iter([b"\xf8" + bytes(15), bytes(16)])
    cid = kafka.kafka_uuid(lambda: next(draws))
    assert cid == "AAAAAAAAAAAAAAAAAAAAAA"
    assert not any(kafka.kafka_uuid().startswith("-") for _ in range(500))


def test_pid_file_tracks_a_live_process_and_forgets_a_dead_one(tmp_path):
    pids = procs.PidFiles(tmp_path)
    tracked = procs.spawn(pids, "sleeper", ["sleep", "30"], log_path=tmp_path / "s.log", env=os.environ, cwd=tmp_path)
    assert pids.running("sleeper") == tracked
    assert procs.stop(pids, "sleeper", grace=5) == "stopped"
    assert pids.running("sleeper") is None
    assert not pids.path("sleeper").exists()


def test_a_recycled_pid_is_not_ours(tmp_path):
    pids = procs.PidFiles(tmp_path)
    # our own pid, but with a start time that is not ours: must not count as the component
    pids.path("ghost").write_text(f"{os.getpid()} 1\n")
    assert pids.running("ghost") is None
    assert procs.stop(pids, "ghost") == "not running"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return True


def test_what_a_crashed_component_left_in_its_group_is_killed(tmp_path):
    pids = procs.PidFiles(tmp_path)
    child_file = tmp_path / "child"
    tracked = procs.spawn(pids, "tm", ["bash", "-c", f"sleep 60 & echo $! > {child_file}; wait"],
                          log_path=tmp_path / "s.log", env=os.environ, cwd=tmp_path)  # fmt: skip
    until_sync(lambda: child_file.exists() and child_file.read_text().strip(), "the child to start", timeout=10,
               interval=0.02)
    child = int(child_file.read_text())
    os.kill(tracked.pid, signal.SIGKILL)  # the JVM crashes; its worker (the child) lives on, orphaned
    with contextlib.suppress(ChildProcessError):
        os.waitpid(tracked.pid, 0)
    assert not _gone(child)
    try:
        assert pids.running("tm") is None and not pids.path("tm").exists()
        until_sync(lambda: _gone(child), "the leftover worker to be killed", timeout=10, interval=0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_stop_escalates_to_sigkill_when_term_is_ignored(tmp_path):
    pids = procs.PidFiles(tmp_path)
    ready = tmp_path / "ready"
    tracked = procs.spawn(pids, "stubborn", ["bash", "-c", f"trap '' TERM; touch {ready}; sleep 60 & wait"],
                          log_path=tmp_path / "s.log", env=os.environ, cwd=tmp_path)
    until_sync(ready.exists, "the stubborn process to be ready", timeout=10, interval=0.02)
    assert procs.stop(pids, "stubborn", grace=1) == "killed after 1s"
    assert not tracked.alive()


def test_port_holder_names_the_process_listening():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = procs.port_holder(port)
        assert holder is not None and str(os.getpid()) in holder
    assert procs.port_holder(port) is None


def test_up_refuses_to_start_when_a_port_is_taken(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        fake = component.Component("fake", (port,), "x", "0", argv=lambda ctx: ["true"], health=None)  # type: ignore[arg-type]
        monkeypatch.setattr(stackctl, "COMPONENTS", (fake,))
        stack = stackctl.Stack(root=tmp_path)
        assert stack.up() == 2
    out = capsys.readouterr().out
    assert f"port {port} needed by fake is taken by pid {os.getpid()}" in out
    assert "nothing was started" in out
    assert not (tmp_path / ".stack" / "run" / "fake.pid").exists()


def test_log_tail_of_missing_file_says_so(tmp_path):
    assert "no log" in procs.log_tail(tmp_path / "nope.log")


def test_components_do_not_inherit_jvm_overrides_or_a_pyflink_loopback_address(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHON_LOOPBACK_SERVER_ADDRESS", "localhost:1")  # left by an in-process mini-cluster
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx1m")
    monkeypatch.setenv("IMGSTREAM_TEST_KEEP", "1")
    ctx = component.Context(paths=component.Paths.for_repo(tmp_path), s3_secret="s", java="/bin/true")
    env = ctx.base_env()
    assert "PYTHON_LOOPBACK_SERVER_ADDRESS" not in env and "JAVA_TOOL_OPTIONS" not in env
    assert env["IMGSTREAM_TEST_KEEP"] == "1"


def test_a_zombie_postmasters_lock_file_is_cleared_and_a_live_ones_kept(tmp_path):
    """The crash matrix's PostgreSQL victim: restarted before PID 1 reaped the SIGKILLed
    postmaster, PostgreSQL refused ("lock file postmaster.pid already exists")."""
    from components import postgres

    lock = tmp_path / "postmaster.pid"
    child = subprocess.Popen(["true"])  # exits at once; unreaped until wait(): a zombie
    try:
        until_sync(lambda: procs.is_zombie(child.pid), "the child to become a zombie", timeout=10, interval=0.05)
        lock.write_text(f"{child.pid}\n/data\n")
        assert postgres.clear_dead_lock(lock) and not lock.exists()
    finally:
        child.wait()
    lock.write_text(f"{os.getpid()}\n/data\n")  # alive: never touched
    assert not postgres.clear_dead_lock(lock) and lock.exists()
    lock.write_text("garbage\n")
    assert not postgres.clear_dead_lock(lock) and lock.exists()
    lock.unlink()
    assert not postgres.clear_dead_lock(lock)
    ctx = component.Context(paths=component.Paths.for_repo(tmp_path), s3_secret="s", java="/bin/true")
    assert {p.name for p in postgres.lock_files(ctx)} == {"postmaster.pid", ".s.PGSQL.5432.lock"}


@contextlib.contextmanager
def _serving_json(body: object):
    """A loopback HTTP server answering every GET with ``body`` as JSON; yields its base URL."""
    import http.server
    import json
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "managers, resource_id, healthy, reason",
    [
        # every slot in use (jobs restored onto it) is healthy: the kill test restarts a TaskManager under two jobs
        ([{"id": "imgstream-tm-new", "slotsNumber": 6, "freeSlots": 0}], "imgstream-tm-new", True, ""),
        # a killed TaskManager the JobManager still lists is not the one just started
        ([{"id": "imgstream-tm-old", "slotsNumber": 6, "freeSlots": 6}], "imgstream-tm-new", False,
         "TaskManager imgstream-tm-new not registered yet (1 others are)"),
        ([], None, False, "no TaskManager registered yet"),
        ([{"id": "x", "slotsNumber": 3, "freeSlots": 3}], None, True, ""),
        ([{"id": "imgstream-tm-new", "slotsNumber": 0}], "imgstream-tm-new", False, "TaskManager registered without task slots"),
    ],
)
def test_taskmanager_health_is_this_taskmanager_registered_not_a_free_slot(managers, resource_id, healthy, reason):
    import asyncio

    import health

    with _serving_json({"taskmanagers": managers}) as url:
        got = asyncio.run(health.flink_taskmanager(SimpleNamespace(flink_rest=url), resource_id))  # type: ignore[arg-type]
    assert (got is None) == healthy, got
    if not healthy:
        assert got == reason


def test_taskmanager_health_refuses_an_unexpected_body():
    import asyncio

    import health

    with _serving_json(["not", "an", "object"]) as url:
        assert asyncio.run(health.flink_taskmanager(SimpleNamespace(flink_rest=url))) == "unexpected /taskmanagers body"  # type: ignore[arg-type]


def test_each_taskmanager_start_gets_a_new_resource_id(tmp_path):
    from components import flink

    ctx = SimpleNamespace(paths=SimpleNamespace(run=tmp_path / "run"))
    first, second = flink.taskmanager_argv(ctx), flink.taskmanager_argv(ctx)  # type: ignore[arg-type]
    ids = [argv[argv.index("-D") + 1] for argv in (first, second)]
    assert ids[0] != ids[1] and all(i.startswith("taskmanager.resource-id=imgstream-tm-") for i in ids)
    assert flink.resource_id_file(ctx).read_text().strip() == ids[1].split("=", 1)[1]  # type: ignore[arg-type]
