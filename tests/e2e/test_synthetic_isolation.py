"""Tests and benchmarks leave the user's data alone (issue 20).

A user's producer (a normal name) uploads a few images through the real gateway; once they are
decided and replicated, the user's ``analytics.*`` rows and ``/v1/usage/<user>`` are recorded.
Then representative tests run in a child pytest (the stats API on hand-written rows, a gateway
upload, the upload -> stats API chain, the pipeline's replay writer), and the live phase of
``bench/flink_throughput.py`` runs (a pipeline job of its own, a paced stream). Afterwards:

* the user's rows and usage are exactly what they were (minute windows: every column but the
  three that change when a window turns final on its own schedule: ``is_final``, ``revision``,
  ``updated_at``);
* no synthetic producer is visible in any ``analytics`` view or in the stack's stats API
  (analyst token), although the child runs wrote thousands of synthetic rows;
* :func:`imgstream.ops.synthetic.purge_stack` deletes them in Cassandra and CDC removes every
  row written before the purge from PostgreSQL's replicated tables too. (This session holds the
  shared lock of :func:`imgstream.ops.synthetic.synthetic_session`, so the children leave their
  rows to it: the last run out purges.)

The child tests read their own synthetic data through the stack's stats API with synthetic
producer tokens: the API must run this branch's code (``make up`` after a merge), or point
``IMGSTREAM_STATS_URL`` at a stats API process that does.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from imgstream.adapters.postgres import connect
from imgstream.config import StackConfig
from imgstream.domain.tokens import KeyRing, keys_file_from_env
from imgstream.ops.synthetic import TABLES, purge_stack
from imgstream.polling import until

REPO = Path(__file__).resolve().parents[2]
#: The user's uploads must be decided and replicated: window + watermark ticks + CDC, loaded box.
DECIDED_DEADLINE_S = 240.0
#: The child test run and the bench's live phase (each submits a pipeline job or waits on CDC).
CHILD_TIMEOUT_S = 900
#: CDC carrying the purge's deletes to PostgreSQL.
PURGE_DEADLINE_S = 180.0
#: Representative tests that write synthetic data to the stack in each way the suite does.
CHILD_TESTS = ("tests/integration/test_stats_api.py", "tests/e2e/test_gateway_e2e.py",
               "tests/e2e/test_stats_e2e.py", "tests/integration/test_replay_rows_cassandra.py")
#: Views whose rows name a producer, and the columns compared for the user (None: all).
VIEWS = ("images", "upload_stats", "upload_stats_hourly", "upload_stats_daily", "duplicates", "late_events")
EVOLVING = {"is_final", "revision", "updated_at"}


def picture(seed: int) -> bytes:
    blocks = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(blocks).resize((256, 256), Image.NEAREST).save(out, "JPEG", quality=90)
    return out.getvalue()


async def user_rows(conn: Any, user: str) -> dict[str, list[tuple[Any, ...]]]:
    """The user's rows in every view (default session: what an analyst sees), sorted."""
    out = {}
    for view in VIEWS:
        rows = await conn.fetch(f"SELECT * FROM analytics.{view} WHERE producer = $1", user)
        out[view] = sorted((tuple((k, v) for k, v in r.items() if k not in EVOLVING) for r in rows), key=repr)
    return out


async def synthetic_visible(conn: Any) -> dict[str, int]:
    """Rows of synthetic producers each view shows an analyst (must be 0 everywhere)."""
    found = {}
    for view in VIEWS:
        found[view] = await conn.fetchval(
            f"SELECT count(*) FROM analytics.{view} WHERE starts_with(producer, 'synthetic-')")
    found["duplicates.original_producer"] = await conn.fetchval(
        "SELECT count(*) FROM analytics.duplicates WHERE starts_with(original_producer, 'synthetic-')")
    return found


async def usage(session: aiohttp.ClientSession, api: str, user: str, token: str, day: datetime) -> dict[str, Any]:
    params = {"from": day.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    async with session.get(f"{api}/v1/usage/{user}", params=params,
                           headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    return {k: body[k] for k in ("producer", "totals", "by_content_type", "first_upload_at", "last_upload_at")}


async def api_producers(session: aiohttp.ClientSession, api: str, token: str) -> set[str]:
    """Every producer the stats API shows an analyst over the last day and the generator's day."""
    seen: set[str] = set()
    now = datetime.now(timezone.utc)
    spans = [(now - timedelta(hours=23), now + timedelta(minutes=5)),
             (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))]
    headers = {"Authorization": f"Bearer {token}"}
    for start, end in spans:
        span = {"from": start.strftime("%Y-%m-%dT%H:00:00Z"), "to": end.strftime("%Y-%m-%dT%H:00:00Z")}
        async with session.get(f"{api}/v1/stats/uploads", headers=headers,
                               params={**span, "interval": "hour", "group_by": "producer"}) as response:
            assert response.status == 200, await response.text()
            seen |= {w["producer"] for w in (await response.json())["windows"]}
        async with session.get(f"{api}/v1/stats/top", headers=headers, params={**span, "limit": "100"}) as response:
            assert response.status == 200, await response.text()
            seen |= {t["producer"] for t in (await response.json())["top"]}
    return seen


def run_child(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


async def test_tests_and_benchmarks_leave_a_users_data_alone(stack_env: dict[str, str],
                                                             stack_config: StackConfig) -> None:
    gateway = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    api = stack_env.get("IMGSTREAM_STATS_URL", "http://127.0.0.1:8090")
    user = f"user-{uuid.uuid4().hex[:8]}"  # a normal producer, as `imgstream token create` issues
    ring = KeyRing.load(Path(keys_file_from_env(stack_env)))
    token, analyst_token = ring.issue(user, "producer"), ring.issue("isolation-analyst", "analyst")
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    analyst = await connect(str(stack_config.postgres.dsn).replace("imgstream@", "analyst@", 1))
    owner = await connect(str(stack_config.postgres.dsn))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            # 1. the user's uploads, decided and replicated
            for i in range(3):
                async with session.post(f"{gateway}/v1/images", data=picture(uuid.uuid4().int % 2**32),
                                        headers={"Authorization": f"Bearer {token}"}) as response:
                    assert response.status == 201, await response.text()

            async def settled() -> dict[str, Any] | None:
                rows = await user_rows(analyst, user)
                uploads = sum(dict(r)["uploads"] for r in rows["upload_stats"])
                return rows if len(rows["images"]) == 3 and uploads == 3 else None

            before = await until(settled, "the user's 3 uploads in analytics.images and upload_stats",
                                 timeout=DECIDED_DEADLINE_S, interval=2.0)
            usage_before = await usage(session, api, user, token, day)
            assert usage_before["totals"]["uploads"] == 3

            # 2. representative tests and the bench's live phase, writing synthetic data
            started = datetime.now(timezone.utc)
            child = await asyncio.to_thread(run_child, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                        "--timeout=600", *CHILD_TESTS])
            assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
            bench = await asyncio.to_thread(run_child, [sys.executable, "bench/flink_throughput.py", "--events=0",
                                                        "--live-seconds=5", "--live-rate=10"])
            assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
            assert "latency received_at -> images row" in bench.stdout

            # they wrote synthetic rows (through CDC) that no analyst can see
            written = await owner.fetchval(
                "SELECT count(*) FROM public.images WHERE starts_with(producer, 'synthetic-') AND processed_at >= $1",
                started)
            assert written > 0
            assert all(n == 0 for n in (await synthetic_visible(analyst)).values()), await synthetic_visible(analyst)
            shown = await api_producers(session, api, analyst_token)
            assert not {p for p in shown if p.startswith("synthetic-")}, shown

            # 3. the user's data is exactly what it was
            assert await user_rows(analyst, user) == before
            assert await usage(session, api, user, token, day) == usage_before

        # 4. the purge removes them from Cassandra, and CDC from PostgreSQL
        purge_started = datetime.now(timezone.utc)
        report = await purge_stack(stack_config)
        assert report.total > 0, report

        async def replicated_purge() -> dict[str, int] | None:
            left = {}
            for table in TABLES:
                stamp = "updated_at" if table == "upload_stats" else "processed_at"
                left[table] = await owner.fetchval(
                    f"SELECT count(*) FROM public.{table} WHERE starts_with(producer, 'synthetic-') "
                    f"AND {stamp} < $1", purge_started - timedelta(seconds=1))
            return left if not any(left.values()) else None

        await until(replicated_purge, "CDC to delete the purged synthetic rows in PostgreSQL",
                    timeout=PURGE_DEADLINE_S, interval=2.0)
        assert await user_rows(analyst, user) == before
    finally:
        # the test's own user is a real producer: remove its rows the same way
        from imgstream.adapters.cassandra import open_session
        from imgstream.ops.synthetic import purge

        cluster, cassandra = open_session(stack_config.cassandra)
        try:
            await asyncio.to_thread(purge, cassandra, lambda p: p == user)
        finally:
            cluster.shutdown()
        await analyst.close()
        await owner.close()


async def test_a_users_upload_is_never_a_duplicate_of_a_synthetic_image(stack_env: dict[str, str],
                                                                        stack_config: StackConfig) -> None:
    """The same picture uploaded first by a synthetic producer (a test, a benchmark), then twice by
    a user: the user's first copy is ``accepted`` (not "duplicate of" an image the user cannot
    see), and the second is a duplicate of the user's own first, so dedup still works within the
    user's realm. Needs the stack's pipeline to run this branch's ``decide`` key (``make up``)."""
    gateway = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    user, tester = f"user-{uuid.uuid4().hex[:8]}", f"synthetic-realm-{uuid.uuid4().hex[:8]}"
    ring = KeyRing.load(Path(keys_file_from_env(stack_env)))
    same = picture(uuid.uuid4().int % 2**32)
    owner = await connect(str(stack_config.postgres.dsn))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def upload(producer: str) -> str:
                headers = {"Authorization": f"Bearer {ring.issue(producer, 'producer')}"}
                async with session.post(f"{gateway}/v1/images", data=same, headers=headers) as response:
                    assert response.status == 201, await response.text()
                    return str((await response.json())["image_id"])

            async def decided(image_id: str) -> tuple[str, str | None]:
                async def row() -> tuple[str, str | None] | None:
                    found = await owner.fetchrow(
                        "SELECT status, duplicate_of FROM public.images WHERE image_id = $1", image_id)
                    return (found["status"], found["duplicate_of"]) if found and found["status"] != "pending" else None
                return await until(row, f"image {image_id} decided and replicated", timeout=DECIDED_DEADLINE_S,
                                   interval=1.0)

            hidden = await upload(tester)
            assert await decided(hidden) == ("accepted", None)
            first = await upload(user)
            assert await decided(first) == ("accepted", None)
            second = await upload(user)
            assert await decided(second) == ("duplicate", first)
    finally:
        from imgstream.adapters.cassandra import open_session
        from imgstream.ops.synthetic import purge

        cluster, cassandra = open_session(stack_config.cassandra)
        try:
            await asyncio.to_thread(purge, cassandra, lambda p: p in (user, tester))
        finally:
            cluster.shutdown()
        await owner.close()
