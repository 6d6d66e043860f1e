"""Every bench script starts the way `make bench` runs it (`python bench/X.py`, so only bench/
is on the path) and takes the shared --quiet-* options: a script that cannot import its own
helpers fails here, not half-way through `make bench` on a running stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
#: Imported by the scripts, not run: helpers without a command line of their own.
HELPERS = {"percentiles.py", "quiet.py", "cpu_budget.py", "worker_profile.py"}
#: Scripts that measure nothing timed (a capacity plan from figures), so they do not wait for quiet.
UNTIMED = {"capacity.py"}
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


def test_the_bench_folder_has_scripts() -> None:
    assert {"status_latency.py", "flink_throughput.py", "cdc_latency.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts_as_make_bench_runs_it(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          cwd=BENCH.parent, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    if script not in UNTIMED:
        assert "--quiet-wait-s" in done.stdout, f"{script} measures time but does not wait for a quiet machine"
