"""Start a measurement on a quiet machine: wait, with a deadline, for the load to settle.

Right after ``make up`` a 2-core machine runs at a load average of ~16 for a minute or two
(Cassandra's start, Kafka Connect's plugin scan, the pipeline's first checkpoints). A latency
measured then describes the start, not the system: ``bench/status_latency.py`` once printed a
p95 of 19 s in that minute and 4 s two minutes later. So the benches that measure the running
stack call :func:`wait_for_quiet` first. It polls the one-minute load average until it is at most
``max_per_cpu`` per CPU this process may use, printing the load while it waits. If the deadline
passes first, it prints a warning and the bench goes on: the run is still worth having, and the
warning beside it tells the reader the machine was busy.

Every bench takes ``--quiet-wait-s`` (how long to wait, 0 = do not wait) and ``--quiet-load``
(the load per CPU that counts as quiet) through :func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Final

#: One-minute load average per usable CPU below which a machine counts as quiet: every core
#: busy, nothing queued behind them.
DEFAULT_MAX_LOAD_PER_CPU: Final = 1.0
#: How long a bench waits for quiet by default: the start of the stack is over by then.
DEFAULT_WAIT_S: Final = 180.0
#: How often the load is read while waiting, and how often the wait says so.
POLL_S: Final = 5.0
PROGRESS_EVERY_S: Final = 30.0


def wait_for_quiet(max_per_cpu: float = DEFAULT_MAX_LOAD_PER_CPU, timeout: float = DEFAULT_WAIT_S, *,
                   load: Callable[[], float] = lambda: os.getloadavg()[0], cpus: float | None = None,
                   say: Callable[[str], None] = print, interval: float = POLL_S) -> bool:
    """Poll ``load()`` (the one-minute load average) until it is at most ``max_per_cpu`` x
    ``cpus`` (default: the CPUs this process may use). Returns True when it got there, and False
    after ``timeout`` seconds, having printed a warning through ``say``. ``timeout <= 0`` reads
    the load once: it only reports a busy machine, it does not wait."""
    # imported here, not at the top: a script declares the options (add_arguments) also in
    # processes whose imgstream is another source tree, maybe older (bench/pipeline_cpu.py's runs)
    from imgstream.cpus import usable_cpus
    from imgstream.polling import PollTimeout, until_sync

    cpus = cpus if cpus is not None else usable_cpus()
    limit = max_per_cpu * cpus
    started = last_said = time.monotonic()

    def quiet() -> bool:
        nonlocal last_said
        now = load()
        if now <= limit:
            return True
        if time.monotonic() - last_said >= PROGRESS_EVERY_S:
            last_said = time.monotonic()
            say(f"[quiet] waiting for the load to settle: {now:.1f} on {cpus:g} CPUs (quiet at <= {limit:.1f}), "
                f"{last_said - started:.0f}s of {timeout:g}s")
        return False

    try:
        until_sync(quiet, "a quiet machine", timeout=timeout, interval=interval)
    except PollTimeout:
        say(f"[quiet] WARNING: load average {load():.1f} on {cpus:g} CPUs after {timeout:g}s (quiet at <= {limit:.1f}): "
            "measuring on a busy machine; read these numbers as such")
        return False
    if time.monotonic() - started >= interval:
        say(f"[quiet] load {load():.1f} on {cpus:g} CPUs after {time.monotonic() - started:.0f}s: measuring")
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--quiet-wait-s`` and ``--quiet-load`` options of a bench script."""
    parser.add_argument("--quiet-wait-s", type=float, default=DEFAULT_WAIT_S,
                        help=f"wait up to this long for the load to settle before measuring; 0 = do not wait "
                             f"(default {DEFAULT_WAIT_S:g})")
    parser.add_argument("--quiet-load", type=float, default=DEFAULT_MAX_LOAD_PER_CPU,
                        help=f"one-minute load average per CPU that counts as quiet (default {DEFAULT_MAX_LOAD_PER_CPU:g})")


def wait_as_told(args: argparse.Namespace) -> bool:
    """:func:`wait_for_quiet` with a bench's ``--quiet-*`` options."""
    return wait_for_quiet(args.quiet_load, args.quiet_wait_s)
