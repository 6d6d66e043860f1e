"""CDC latency and throughput on the running stack: Cassandra write -> row visible in PostgreSQL.

Writes to a probe table of its own (created, armed, and dropped again; see imgstream/ops/cdc_probe.py)
whose PostgreSQL replica is pre-created with ``cdc_applied_at`` set by trigger at insert, so each
row's delay is measured inside the database:

    latency = cdc_applied_at (PostgreSQL clock) - written_at (the writer's clock, same machine)

1. steady streams at a few rates, one row per write: p50/p90/p99/max latency;
2. a burst written as fast as the driver goes: rows/s end to end, side by side with the rows/s
   Cassandra alone accepted in the same run (their ratio: does the chain keep up with the writes?);
3. a backlog drain: with the CDC agent stopped (``stackctl down cassandra-cdc``), rows pile up in
   cdc_raw; once it is back, the rate at which they reach PostgreSQL (first to last
   ``cdc_applied_at``) is the chain's own capacity, independent of the writer.

Run: ``.venv/bin/python bench/cdc_latency.py [--rates 20,200] [--seconds 20] [--burst 20000] [--drain 20000]``
(``make bench`` runs it with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script (`make bench`): bench/ alone is on the path

from bench import quiet  # noqa: E402
from bench.percentiles import percentile  # noqa: E402
from imgstream.adapters.cassandra import CassandraStore  # noqa: E402
from imgstream.adapters.postgres import connect  # noqa: E402
from imgstream.config import StackConfig, load_env_file  # noqa: E402
from imgstream.ops.cdc_probe import CdcProbe  # noqa: E402
from imgstream.polling import until  # noqa: E402
COLUMNS = {"id": "text", "seq": "bigint", "written_at": "timestamp", "payload": "text"}
PAYLOAD = "x" * 200  # about the size of an images row's text columns


def _config() -> StackConfig:
    env_file = REPO / ".stack" / "env"
    if not env_file.exists():
        raise SystemExit("the local stack is not up (no .stack/env): run `make up`")
    return StackConfig.from_env(load_env_file(env_file))


async def _precreate_replica(pg: asyncpg.Connection, table: str) -> None:
    """The replica with an applied-at clock (the sink uses an existing table as it is)."""
    await pg.execute(f"""
        CREATE TABLE public."{table}" (id text PRIMARY KEY, seq bigint, written_at timestamptz, payload text,
                                       cdc_op text, cdc_ts timestamptz,
                                       cdc_applied_at timestamptz NOT NULL DEFAULT clock_timestamp());
        CREATE TRIGGER "{table}_applied" BEFORE INSERT OR UPDATE ON public."{table}"
            FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();""")


async def _steady(probe: CdcProbe, rate: float, seconds: float, prefix: str) -> dict[str, float]:
    """One row per write at ``rate`` rows/s for ``seconds``; latency per row from the database."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        row = (f"{prefix}-{i:07d}", i, datetime.now(timezone.utc), PAYLOAD)
        await asyncio.to_thread(probe.store.execute, probe.insert_cql(), list(row))

    async def all_there() -> bool:
        return await probe.pg.fetchval(f"SELECT count(*) FROM {probe.table} WHERE id LIKE $1", prefix + "-%") == n

    await until(all_there, f"{n} rows at {rate}/s replicated", timeout=120)
    rows = await probe.pg.fetch(
        f"SELECT extract(epoch FROM cdc_applied_at - written_at) * 1000 AS ms, "
        f"extract(epoch FROM cdc_applied_at - cdc_ts) * 1000 AS from_commit_ms FROM {probe.table} WHERE id LIKE $1",
        prefix + "-%")
    ms = [float(r["ms"]) for r in rows]
    return {"rows": n, "p50": percentile(ms, 0.5), "p90": percentile(ms, 0.9), "p99": percentile(ms, 0.99), "max": max(ms),
            "mean": statistics.fmean(ms)}


async def _burst(probe: CdcProbe, n: int) -> dict[str, float]:
    rows = [(f"burst-{i:08d}", i, datetime.now(timezone.utc), PAYLOAD) for i in range(n)]
    t0 = time.monotonic()
    await asyncio.to_thread(probe.write, rows)
    written = time.monotonic() - t0

    async def all_there() -> bool:
        return await probe.pg.fetchval(f"SELECT count(*) FROM {probe.table} WHERE id LIKE 'burst-%'") == n

    await until(all_there, f"burst of {n} replicated", timeout=600, interval=0.1)
    replicated = time.monotonic() - t0
    return {"rows": n, "cassandra_s": written, "chain_s": replicated,
            "cassandra_rows_s": n / written, "chain_rows_s": n / replicated}


def _stackctl(*args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "local-stack" / "stackctl.py"), *args],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"stackctl {' '.join(args)} failed:\n{result.stdout[-2000:]}")


async def _drain(probe: CdcProbe, n: int) -> dict[str, float]:
    """Stop the agent, write ``n`` rows, start it: how fast does the backlog reach PostgreSQL?"""
    await asyncio.to_thread(_stackctl, "down", "cassandra-cdc")
    try:
        rows = [(f"drain-{i:08d}", i, datetime.now(timezone.utc), PAYLOAD) for i in range(n)]
        await asyncio.to_thread(probe.write, rows)
    finally:
        await asyncio.to_thread(_stackctl, "up", "cassandra-cdc")

    async def all_there() -> bool:
        return await probe.pg.fetchval(f"SELECT count(*) FROM {probe.table} WHERE id LIKE 'drain-%'") == n

    await until(all_there, f"backlog of {n} replicated", timeout=600, interval=0.2)
    span = await probe.pg.fetchval(
        f"SELECT extract(epoch FROM max(cdc_applied_at) - min(cdc_applied_at)) FROM {probe.table} "
        "WHERE id LIKE 'drain-%'")
    return {"rows": n, "span_s": float(span), "rows_s": n / max(float(span), 1e-3)}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20,200", help="steady write rates, rows/s (comma-separated)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each steady stream")
    parser.add_argument("--burst", type=int, default=20000, help="rows in the burst")
    parser.add_argument("--drain", type=int, default=20000, help="rows in the backlog drain (0: skip)")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    await asyncio.to_thread(quiet.wait_as_told, args)
    cfg = _config()
    store = CassandraStore.connect(cfg.cassandra)
    pg = await connect(str(cfg.postgres.dsn))
    probe = CdcProbe(store, pg, cfg.kafka, f"cdc_bench_{uuid.uuid4().hex[:8]}", COLUMNS, ["id"])
    try:
        await _precreate_replica(pg, probe.table)
        await probe.create(sentinel=("__sentinel__", 0, datetime.now(timezone.utc), ""))
        print(f"CDC latency, Cassandra write -> row in PostgreSQL (probe {probe.table})")
        print(f"{'rate/s':>8} {'rows':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for rate in (float(r) for r in args.rates.split(",")):
            s = await _steady(probe, rate, args.seconds, f"r{int(rate)}")
            print(f"{rate:8.0f} {s['rows']:6d} {s['p50']:8.0f} {s['p90']:8.0f} {s['p99']:8.0f} {s['max']:8.0f}")
        b = await _burst(probe, args.burst)
        print(f"burst of {b['rows']} rows: Cassandra accepted {b['cassandra_rows_s']:.0f} rows/s "
              f"({b['cassandra_s']:.1f} s); all in PostgreSQL after {b['chain_s']:.1f} s = "
              f"{b['chain_rows_s']:.0f} rows/s end to end; chain/cassandra = {b['chain_rows_s'] / b['cassandra_rows_s']:.2f}")
        if args.drain:
            d = await _drain(probe, args.drain)
            print(f"backlog of {d['rows']} rows (agent stopped while written): drained into PostgreSQL in "
                  f"{d['span_s']:.1f} s = {d['rows_s']:.0f} rows/s (chain capacity); "
                  f"vs Cassandra writes above = {d['rows_s'] / b['cassandra_rows_s']:.2f}x")
        diff = await probe.wait_equal(120)
        print(f"reconciled: {diff.source_rows} rows in Cassandra, {diff.replica_rows} in PostgreSQL, equal={diff.equal}")
        return 0 if diff.equal else 1
    finally:
        try:
            await probe.drop(300)
        finally:
            store.close()
            await pg.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
