"""bench/quiet: a bench waits, with a deadline, for the load to settle, and says when it did not."""

from __future__ import annotations

import argparse
from typing import Iterator

from bench.quiet import add_arguments, wait_for_quiet


def loads(*values: float) -> "Iterator[float]":
    """Load readings in turn; the last one repeats."""
    yield from values
    while True:
        yield values[-1]


def test_a_quiet_machine_is_measured_at_once_and_silently() -> None:
    said: list[str] = []
    readings = loads(1.9)
    assert wait_for_quiet(1.0, 60, load=lambda: next(readings), cpus=2, say=said.append, interval=0.001)
    assert said == []


def test_it_waits_until_the_load_settles() -> None:
    said: list[str] = []
    seen: list[float] = []
    readings = loads(16.0, 9.0, 4.5, 1.5)

    def load() -> float:
        seen.append(next(readings))
        return seen[-1]

    assert wait_for_quiet(1.0, 60, load=load, cpus=2, say=said.append, interval=0.001)
    assert seen[:4] == [16.0, 9.0, 4.5, 1.5]  # it read until the load was quiet, and then measured
    assert not any("WARNING" in line for line in said)


def test_a_machine_that_stays_busy_gets_a_warning_not_an_endless_wait() -> None:
    said: list[str] = []
    assert not wait_for_quiet(1.0, 0.05, load=lambda: 3.0, cpus=2, say=said.append, interval=0.001)
    assert len(said) == 1 and "WARNING" in said[0] and "3.0 on 2 CPUs" in said[0] and "<= 2.0" in said[0]


def test_no_wait_still_reports_a_busy_machine() -> None:
    said: list[str] = []
    assert not wait_for_quiet(1.0, 0, load=lambda: 8.0, cpus=4, say=said.append)
    assert said and "WARNING" in said[0]
    said.clear()
    assert wait_for_quiet(1.0, 0, load=lambda: 3.9, cpus=4, say=said.append)
    assert said == []


def test_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--quiet-wait-s=0", "--quiet-load=0.5"])
    assert (args.quiet_wait_s, args.quiet_load) == (0.0, 0.5)
    assert parser.parse_args([]).quiet_wait_s > 0
