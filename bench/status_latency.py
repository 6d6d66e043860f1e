"""Upload -> status latency on the running stack, through the real gateway and the stats API.

A synthetic producer uploads ``--seconds x --rate`` distinct small PNGs through the gateway
(port 8080), paced; the stack's own pipeline job decides them, CDC carries the rows to
PostgreSQL and the stats API (port 8090) serves them. Measured side by side in one run, per image:

* **upload**: the upload request's start -> its 201 (the gateway: checks, object PUT, publish;
  a 429/503 is retried after its Retry-After under the same Idempotency-Key, as a client does);
* **status (API)**: the request's start -> the first ``GET /v1/images/{id}`` with a status other
  than ``pending``,
  polled every ``--poll-ms`` from ``--poll-after-ms`` on, for one image in ``--sample``;
* **decided**: ``received_at`` -> ``processed_at`` of the Cassandra ``images`` row (the job);
* **replicated**: ``received_at`` -> ``cdc_applied_at`` of the PostgreSQL row (job + CDC).

p50/p95/p99 of each, and the share of the status latency that is the job's (decided ÷ status).
The out-of-orderness bound, the watermark interval, the heartbeat interval and Cassandra's
commit-log sync period set most of it (docs/flink-jobs.md, "Status latency").

    .venv/bin/python bench/status_latency.py [--seconds 60] [--rate 50] [--sample 10]

Every producer is synthetic: the run's rows are purged when it ends (or at the next start).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flink_jobs import submit, testing  # noqa: E402
from bench.percentiles import describe, percentile  # noqa: E402
from bench import quiet  # noqa: E402
from imgstream.adapters.cassandra import open_session  # noqa: E402
from imgstream.adapters.postgres import connect  # noqa: E402
from imgstream.config import StackConfig  # noqa: E402
from imgstream.domain.producers import synthetic  # noqa: E402
from imgstream.domain.tokens import KeyRing, keys_file_from_env  # noqa: E402
from imgstream.polling import until  # noqa: E402

#: How long after the last upload every row must be in PostgreSQL.
SETTLE_S = 120.0
#: An answer slower than this is reported as a failure of the run, not as a latency.
STATUS_DEADLINE_S = 60.0


def png(rnd: random.Random, side: int = 48) -> bytes:
    """A distinct noise picture (its pHash is random: near duplicates are as rare as chance)."""
    out = io.BytesIO()
    Image.frombytes("L", (side, side), rnd.randbytes(side * side)).save(out, format="PNG")
    return out.getvalue()


class Run:
    """One paced stream of uploads and the status polls of its sample."""

    def __init__(self, gateway: str, api: str, token: str, args: argparse.Namespace) -> None:
        self.gateway, self.api, self.args = gateway, api, args
        self.headers = {"Authorization": f"Bearer {token}"}
        self.upload_s: list[float] = []
        self.status_s: list[float] = []
        self.ids: list[str] = []
        self.failures: list[str] = []
        self.retries = 0

    async def stream(self) -> None:
        rnd = random.Random(self.args.seed)
        count = self.args.seconds * self.args.rate
        polls: list[asyncio.Task[None]] = []
        uploads: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STATUS_DEADLINE_S)) as session:
            start = time.monotonic()
            for n in range(count):
                ahead = start + n / self.args.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing the stream
                uploads.append(asyncio.create_task(self.upload(session, png(rnd), n % self.args.sample == 0, polls)))
            await asyncio.gather(*uploads)
            await asyncio.gather(*polls)

    async def upload(self, session: aiohttp.ClientSession, body: bytes, sampled: bool,
                     polls: list[asyncio.Task[None]]) -> None:  # fmt: skip
        started = time.monotonic()
        headers = {**self.headers, "Content-Type": "image/png", "Idempotency-Key": str(uuid.uuid4())}
        while True:  # a client's loop: 429/503 are retried after Retry-After, under the same key
            async with session.post(f"{self.gateway}/v1/images", data=body, headers=headers) as response:
                if response.status == 201:
                    image_id = (await response.json())["image_id"]
                    break
                if response.status not in (429, 503) or time.monotonic() - started > STATUS_DEADLINE_S:
                    self.failures.append(f"upload {response.status}: {(await response.text())[:200]}")
                    return
                self.retries += 1
                retry_after = float(response.headers.get("Retry-After") or 1)
            await asyncio.sleep(retry_after)
        self.upload_s.append(time.monotonic() - started)
        self.ids.append(image_id)
        if sampled:
            polls.append(asyncio.create_task(self.poll(session, image_id, started)))

    async def poll(self, session: aiohttp.ClientSession, image_id: str, started: float) -> None:
        await asyncio.sleep(max(0.0, started + self.args.poll_after_ms / 1000 - time.monotonic()))
        while time.monotonic() - started < STATUS_DEADLINE_S:
            async with session.get(f"{self.api}/v1/images/{image_id}", headers=self.headers) as response:
                if response.status == 200 and (await response.json()).get("status") not in (None, "pending"):
                    self.status_s.append(time.monotonic() - started)
                    return
                if response.status not in (200, 404):
                    self.failures.append(f"status {response.status}: {(await response.text())[:200]}")
                    return
            await asyncio.sleep(self.args.poll_ms / 1000)
        self.failures.append(f"no status for {image_id} within {STATUS_DEADLINE_S:.0f}s")


async def stored_delays(config: StackConfig, ids: list[str]) -> tuple[list[float], list[float]]:
    """Per image: received_at -> Cassandra processed_at, and received_at -> PostgreSQL cdc_applied_at."""
    pg = await connect(str(config.postgres.dsn))
    cluster, session = open_session(config.cassandra)
    try:
        async def replicated() -> list[Any] | None:
            rows = await pg.fetch("SELECT image_id, received_at, cdc_applied_at FROM public.images "
                                  "WHERE image_id = ANY($1::text[])", ids)  # fmt: skip
            return rows if len(rows) == len(ids) else None

        rows = await until(replicated, "every image in PostgreSQL", timeout=SETTLE_S, interval=1.0)
        select = session.prepare("SELECT received_at, processed_at FROM images WHERE image_id = ?")
        decided = []
        for image_id in ids:
            row = session.execute(select, (image_id,)).one()
            decided.append((row.processed_at - row.received_at).total_seconds())
        return decided, [(r["cdc_applied_at"] - r["received_at"]).total_seconds() for r in rows]
    finally:
        cluster.shutdown()
        await pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=50, help="uploads per second")
    parser.add_argument("--sample", type=int, default=10, help="poll the status of one image in this many")
    parser.add_argument("--poll-ms", type=int, default=100)
    parser.add_argument("--poll-after-ms", type=int, default=1000, help="first poll this long after the upload")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    quiet.add_arguments(parser)
    args = parser.parse_args()
    quiet.wait_as_told(args)
    env = submit.stack_env()
    config = StackConfig.from_env(env)
    gateway = env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    api = env.get("IMGSTREAM_STATS_URL", "http://127.0.0.1:8090")
    producer = synthetic(f"bench-status-{uuid.uuid4().hex[:8]}")
    token = KeyRing.load(keys_file_from_env(env)).issue(producer, "producer")
    with testing.synthetic_run(env, "status_latency"):
        run = Run(gateway, api, token, args)
        print(f"{args.seconds * args.rate} uploads at {args.rate}/s as {producer}, status of 1 in {args.sample} "
              f"polled every {args.poll_ms} ms ...", flush=True)  # fmt: skip
        asyncio.run(run.stream())
        if run.failures:
            raise SystemExit(f"{len(run.failures)} failures, e.g. {run.failures[:3]}")
        decided, replicated = asyncio.run(stored_delays(config, run.ids))
    print(f"upload -> 201 (gateway)           {describe(run.upload_s)}, {run.retries} retries after 429/503")
    print(f"upload -> status (stats API)      {describe(run.status_s)}")
    print(f"received_at -> Cassandra row      {describe(decided)}")
    print(f"received_at -> PostgreSQL row     {describe(replicated)}")
    if run.status_s:
        share = percentile(decided, 0.5) / percentile(run.status_s, 0.5)
        print(f"the job's share of the median status latency: {share:.2f}")


if __name__ == "__main__":
    main()
