"""Sizing from what the process may use: CPUs (affinity, cgroup quota) and the decode budget."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from PIL import Image

from api.gateway.decoding import PEAK_BYTES_PER_PIXEL, DecodeBudget, decode_cost
from imgstream.cpus import cgroup_cpu_limit, usable_cpus


def test_cgroup_v2_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(len(os.sched_getaffinity(0)), 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path) == 1  # half a CPU still runs one thread


def test_no_quota_means_the_affinity_mask(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 1.0 and usable_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path) is None


def test_decode_cost_knows_jpeg_draft_mode() -> None:
    png = Image.new("I;16", (1000, 500))
    assert decode_cost(png) == 500_000 * PEAK_BYTES_PER_PIXEL
    jpeg = Image.new("RGB", (1000, 500))
    jpeg.format = "JPEG"
    assert decode_cost(jpeg) == 500_000 * PEAK_BYTES_PER_PIXEL // 64


def test_the_budget_lets_big_decodes_run_one_at_a_time_and_small_ones_together() -> None:
    big = Image.new("L", (10_000, 5_000))  # 250 MB estimated: over half the budget
    small = Image.new("L", (100, 100))
    budget = DecodeBudget(limit=300 * 1024 * 1024)
    inside, most = [0], [0]
    lock = threading.Lock()

    def decode(image: Image.Image) -> None:
        with budget.reserve(image):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.05)  # the decode itself
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decode, args=(big,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1 and budget.in_use == 0
    assert budget.peak <= budget.limit

    most[0] = 0
    threads = [threading.Thread(target=decode, args=(small,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] > 1  # small images never wait for each other


def test_an_image_over_the_whole_budget_still_runs_alone() -> None:
    budget = DecodeBudget(limit=1000)
    with budget.reserve(Image.new("L", (100, 100))):
        assert budget.in_use == 1000
    assert budget.in_use == 0
