"""Process supervision for the local stack: start detached, track by pid file, stop by pid.

A pid file holds ``<pid> <start-time-in-clock-ticks>``; a process counts as ours only if both
match ``/proc/<pid>/stat``, so a recycled pid is never signalled. Nothing here looks processes
up by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of one process: the fields the stack reads."""

    state: str
    ppid: int
    pgrp: int
    #: utime + stime + cutime + cstime: CPU clock ticks of the process and its reaped children
    cpu_ticks: int
    start_ticks: int


def _read_stat(pid: int) -> ProcStat | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields from 3 (state) on; the command name in field 2 may contain spaces, so split after ')'
    f = stat.rsplit(")", 1)[1].split()
    return ProcStat(f[0], int(f[1]), int(f[2]), sum(int(x) for x in f[11:15]), int(f[19]))


def _start_ticks(pid: int) -> int | None:
    stat = _read_stat(pid)
    if stat is None or stat.state == "Z":  # zombie: exited, not yet reaped
        return None
    return stat.start_ticks


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but is not yet reaped by its parent (here PID 1, which reaps
    when it gets to it): it still answers ``kill(pid, 0)``, yet holds no port, memory or file."""
    stat = _read_stat(pid)
    return stat is not None and stat.state == "Z"


def process_table() -> dict[int, ProcStat]:
    """Every process on the machine, by pid (one read of ``/proc``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read_stat(int(entry))) is not None:
            table[int(entry)] = stat
    return table


def descendants(pid: int, table: Mapping[int, ProcStat] | None = None) -> list[int]:
    """Children of ``pid``, their children and so on, from ``table`` (default: read now)."""
    children: dict[int, list[int]] = {}
    for child, stat in (process_table() if table is None else table).items():
        children.setdefault(stat.ppid, []).append(child)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass(frozen=True)
class Tracked:
    """A process started by the stack, as recorded in its pid file."""

    name: str
    pid: int
    start_ticks: int

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def rss_mib(self) -> float | None:
        """Resident memory of the process and its children (the JVM, postgres backends)."""
        total = 0
        for pid in [self.pid, *descendants(self.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024 if total else None


class PidFiles:
    """The ``run/`` folder of the state directory: one pid file per component."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def read(self, name: str) -> Tracked | None:
        try:
            pid_text, ticks_text = self.path(name).read_text().split()
            return Tracked(name, int(pid_text), int(ticks_text))
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> Tracked | None:
        """The tracked process if it is still the one we started, else ``None``: the stale file
        is removed, and what is left of the dead process's group is killed."""
        tracked = self.read(name)
        if tracked is None:
            return None
        if tracked.alive():
            return tracked
        kill_leftovers(tracked)
        self.path(name).unlink(missing_ok=True)
        return None

    def write(self, name: str, pid: int) -> Tracked:
        ticks = _start_ticks(pid)
        if ticks is None:
            raise RuntimeError(f"{name}: process {pid} exited immediately")
        self.path(name).write_text(f"{pid} {ticks}\n")
        return Tracked(name, pid, ticks)


def kill_leftovers(tracked: Tracked) -> None:
    """SIGKILL what is left of a dead component's process group.

    A TaskManager that crashes (a JVM SIGSEGV, an OOM kill) leaves its Python workers running,
    orphaned, in its group; ``make down`` and the next ``up`` would never see them. The group
    is ours: the component was started in a session of its own, so its group id is its pid, and
    the kernel hands that pid to a new process only once no process is left in the group. So
    unless the pid already names another process, every member of the group is a leftover.
    """
    if _start_ticks(tracked.pid) is not None:
        return  # the pid names a process again (ours would be alive): the group is not ours
    try:
        os.killpg(tracked.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def spawn(
    pids: PidFiles,
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    user: str | None = None,
) -> Tracked:
    """Start ``argv`` detached in its own session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            user=user,
        )
    return pids.write(name, proc.pid)


def stop(pids: PidFiles, name: str, *, sig: int = signal.SIGTERM, grace: float = 30.0) -> str:
    """Signal the tracked process, wait up to ``grace`` s, then SIGKILL its group. Returns what happened.

    Once the main process is gone, any child left in its process group (a Flink Python worker,
    say) is killed too, so no stray process outlives ``make down``.
    """
    tracked = pids.running(name)
    if tracked is None:
        pids.path(name).unlink(missing_ok=True)
        return "not running"
    try:
        os.kill(tracked.pid, sig)
    except ProcessLookupError:
        pass
    result = f"killed after {grace:.0f}s"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not tracked.alive():
            result = "stopped"
            break
        time.sleep(0.2)
    try:
        os.killpg(tracked.pid, signal.SIGKILL)  # the group is ours: started with its own session
    except (ProcessLookupError, PermissionError):
        pass
    # SIGKILL is delivered asynchronously: report only once the process is really gone.
    kill_deadline = time.monotonic() + 10
    while tracked.alive() and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    pids.path(name).unlink(missing_ok=True)
    return result


def port_holder(port: int) -> str | None:
    """Describe the process listening on 127.0.0.1/any ``port`` (``None`` if the port is free)."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if out:
        # users:(("java",pid=123,fd=45))
        if "pid=" in out:
            pid = out.split("pid=", 1)[1].split(",", 1)[0]
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                cmd = "?"
            return f"pid {pid}: {cmd}"
        return out.splitlines()[0]
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return "an unknown process"
    return None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:].decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])
