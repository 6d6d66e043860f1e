"""Where the TaskManager's Python workers spend their time: py-spy of each worker, by part.

``bench/flink_throughput.py --profile-workers=SECONDS`` calls :func:`profile_workers` while the
pipeline runs: every PyFlink worker of the stack's TaskManager (its ``beam_boot`` processes) is
sampled with native frames - CPython's garbage collector and the Cython coders show only there
- and :func:`split` sorts each busy sample into the part of the job it belongs to (the first
frame from the leaf up that a :data:`PARTS` pattern names). Threads waiting (locks, queues,
``select``) and gRPC's completion-queue spin thread are left out; what is left is the worker's
busy time. py-spy pauses a process to read its native stack, so a profiled run is slower and
its throughput is not comparable; on 2 cores py-spy falls behind and takes fewer samples than
asked, so read the shares as rough.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

sys.path.append(str(Path(__file__).resolve().parents[1] / "local-stack"))

import procs  # noqa: E402  (local-stack/procs.py: the stack's pid files and /proc reading)

from imgstream.polling import until  # noqa: E402

#: A sample whose stack holds one of these functions is a thread waiting, not working.
WAITING = ("Condition.wait", "Event.wait", "Queue.get", "Semaphore.acquire", "_wait_once", "PyThread_acquire_lock_timed")
#: Leaf functions of a thread blocked in the kernel.
BLOCKED = ("select", "epoll_wait", "clock_nanosleep", "poll")
#: gRPC's channel spin thread: a native loop that py-spy cannot tell busy from blocked.
SPIN = "channel_spin"
#: The parts of a worker's time, first match wins (checked from the leaf frame up).
PARTS: tuple[tuple[str, str], ...] = (
    ("garbage collector", r"^gc_collect|gc_collect_main"),
    ("pickling (wire, state values)", r"CloudPickleCoderImpl|cloudpickle|PickleCoderImpl|_pickle"),
    ("state (commit, reads)", r"state_impl\.py|internal_state|InternalSyncMap|StateHandler|state_cache"),
    ("state mirrors", r"mirror\.py"),
    ("timers", r"TimerHandler|timer_service|register_event_time_timer|InternalTimer"),
    ("cassandra writer", r"cassandra_sink\.py|cassandra[/.]|cluster\.cpython|query\.cpython|policies\.py"),
    ("cleaning", r"cleaning\.py|Cleaner|jsonschema|fastjsonschema"),
    ("dedup (domain)", r"dedup\.py|hashing\.py|sharding\.py"),
    ("windows (domain)", r"windows\.py"),
    ("stage code", r"sharded\.py|functions\.py"),
    ("emitting records", r"_emit_results|IntermediateOutputProcessor|Operation_output|FunctionOperation"),
    ("beam/grpc harness", r"cygrpc|_channel\.py|sdk_worker|bundle_processor|data_plane|grpc|upb_|_message|beam"),
)
_PARTS = tuple((part, re.compile(pattern)) for part, pattern in PARTS)
#: How often :func:`profile_pipeline` looks for the pipeline's workers.
LOOK_EVERY_S = 0.5
#: The job's operators, as their classes appear in stacks.
OPERATORS = ("DecideExact", "DecideNear", "DecideWindows", "WriteSteps", "ApplyDeletions")


@dataclass
class WorkerSplit:
    """One worker's busy samples by part, and which operators its stacks show."""

    samples: int = 0
    busy: int = 0
    parts: Counter[str] = field(default_factory=Counter)
    operators: Counter[str] = field(default_factory=Counter)

    def lines(self, label: str) -> list[str]:
        ops = ", ".join(name for name, _ in self.operators.most_common()) or "-"
        out = [f"{label}: {self.busy} busy samples of {self.samples} (operators: {ops})"]
        out += [f"  {100 * n / max(self.busy, 1):5.1f} %  {part}" for part, n in self.parts.most_common()]
        return out


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name``; a native frame ``0x... (lib.so)`` keeps its text."""
    return frame.split(" (", 1)[0]


def split(raw: Iterable[str]) -> WorkerSplit:
    """Sort py-spy's raw (collapsed) stacks - ``frame;frame;... count`` per line - by part."""
    out = WorkerSplit()
    for line in raw:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        out.samples += n
        frames = stack.split(";")
        names = [_function(f) for f in frames]
        if any(name in WAITING for name in names) or names[-1] in BLOCKED or any(SPIN in f for f in frames):
            continue
        out.busy += n
        for op in OPERATORS:
            if any(op in f for f in frames):
                out.operators[op] += n
        part = next((part for f in reversed(frames) for part, rx in _PARTS if rx.search(f)), "other")
        out.parts[part] += n
    return out


def workers(taskmanager_pid: int) -> list[int]:
    """The PyFlink worker processes (``beam_boot``) under the TaskManager."""
    found = []
    for pid in procs.descendants(taskmanager_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # exited
        if b"beam_boot" in cmdline:
            found.append(pid)
    return sorted(found)


def py_spy() -> str:
    """The py-spy next to this interpreter (requirements.txt pins it)."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if not found:
        raise FileNotFoundError("py-spy not found next to the venv's python: run `make deps`")
    return found


async def profile_pipeline(run_dir: Path, seconds: int) -> list[str]:
    """Once the stack's TaskManager (its pid file in ``run_dir``) has Python workers, sample
    them for ``seconds`` and return report lines."""
    tracked = procs.PidFiles(run_dir).read("flink-taskmanager")
    if tracked is None:
        return ["no TaskManager pid file: nothing profiled"]
    await until(lambda: asyncio.to_thread(workers, tracked.pid), "the pipeline's Python workers", timeout=300,
                interval=LOOK_EVERY_S)  # fmt: skip
    return await profile_workers(tracked.pid, seconds)


async def profile_workers(taskmanager_pid: int, seconds: int, rate: int = 40) -> list[str]:
    """Sample every Python worker of the TaskManager for ``seconds`` and return report lines."""
    pids = workers(taskmanager_pid)
    if not pids:
        return [f"no Python workers under TaskManager {taskmanager_pid}"]
    spy = py_spy()
    with tempfile.TemporaryDirectory(prefix="worker-profile-") as tmp:
        outputs = {pid: Path(tmp) / f"{pid}.txt" for pid in pids}
        runs = [
            await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--native", "--rate", str(rate), "--duration", str(seconds),
                "--format", "raw", "--output", str(path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            for pid, path in outputs.items()
        ]  # fmt: skip
        errors = [(await run.communicate())[1] for run in runs]
        lines = [f"Python workers, py-spy with native frames, {seconds} s at {rate}/s (busy samples by part):"]
        for (pid, path), err in zip(outputs.items(), errors):
            if not path.is_file():
                lines.append(f"worker {pid}: no profile ({err.decode(errors='replace').strip()[-200:]})")
                continue
            lines += split(path.read_text().splitlines()).lines(f"worker {pid}")
    return lines

