"""How many CPUs this process may use: the affinity mask and the cgroup CPU quota, not the node.

``os.cpu_count()`` counts the machine's cores; a container limited to one CPU on a 64-core node
would size its thread pools for 64 and hold 64 decodes in memory at once. This module reads the
two limits Linux actually enforces: the scheduler affinity (taskset, cpusets) and the CFS quota
of the process's cgroup (Kubernetes ``resources.limits.cpu``), v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where the cgroup file system is mounted in a container (and on the host).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of the cgroup at ``root`` in CPUs (1.5 for ``150000 100000``), or ``None``
    when there is none (``max``, ``-1``, or no readable file)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota_v2, _, period_v2 = v2.partition(" ")
        if quota_v2.isdigit() and period_v2.isdigit() and int(period_v2) > 0:
            return int(quota_v2) / int(period_v2)
        return None  # "max": no quota
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and quota_v1.lstrip("-").isdigit() and period_v1.isdigit():
        quota, period = int(quota_v1), int(period_v1)
        if quota > 0 and period > 0:
            return quota / period
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process may keep busy: the affinity mask, capped by the cgroup quota
    (rounded up: a 1.5-CPU quota keeps two threads busy part of the time). At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
