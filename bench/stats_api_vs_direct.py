"""Stats API vs the same queries issued directly with asyncpg, side by side in one run, on the stack.

For each main endpoint, alternating rounds of the same duration and concurrency:

* **api**: N concurrent clients GET the endpoint from a stats API process (``python -m api.stats``,
  started by this script on a free port unless ``--api-url``): token check, strict parsing, the
  bound SQL, freshness (cached per second), JSON, ETag.
* **direct**: N concurrent tasks in this process run the very statements the endpoint runs
  (built by the same query objects) on an asyncpg pool of the same size: the least any client of
  these numbers must do.

Prints requests/s, p50/p99 latency and the ratio API / direct (requests/s) per endpoint. The data
is a bench set of its own (minute rows for a few producers over three days, images and
duplicates) in a past year no real data lives in; it is deleted at the end unless ``--keep``.

Usage: ``.venv/bin/python bench/stats_api_vs_direct.py [--concurrency 8] [--seconds 4] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.stats.config import StatsConfig  # noqa: E402
from api.stats.pool import open_pool  # noqa: E402
from api.stats.params import Scope  # noqa: E402
from api.stats.queries.duplicates import DuplicatesQuery  # noqa: E402
from api.stats.queries.image import ImageQuery  # noqa: E402
from api.stats.queries.summary import SummaryQuery  # noqa: E402
from api.stats.queries.top import TopQuery  # noqa: E402
from api.stats.queries.uploads import UploadsQuery  # noqa: E402
from api.stats.sql import Sql  # noqa: E402
from api.stats.times import format_time  # noqa: E402
from bench.percentiles import percentile  # noqa: E402
from bench import quiet  # noqa: E402
from imgstream.adapters.postgres import connect  # noqa: E402
from imgstream.config import StackConfig, load_env_file  # noqa: E402
from api.common.process import ServiceNotReady, ServiceProcess, start_service  # noqa: E402
from flink_jobs import testing  # noqa: E402
from imgstream.domain.producers import synthetic  # noqa: E402
from api.common.runtime import uvloop_factory  # noqa: E402
from imgstream.domain.tokens import KeyRing, ensure_key_file  # noqa: E402

BENCH_DAY = datetime(2004, 2, 1, tzinfo=timezone.utc)
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Synthetic producers (hidden from analysts): the API and the direct pool both read them with
#: the views' test-only switch on (IMGSTREAM_STATS_INCLUDE_SYNTHETIC).
PRODUCERS = [synthetic(f"bench-stats-{i}") for i in range(6)]
CONTENT_TYPES = ["image/jpeg", "image/png"]


@dataclasses.dataclass
class Result:
    mode: str
    endpoint: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    client_cpu: float = 0.0  # CPU seconds of this (the client / direct) process
    server_cpu: float = 0.0  # CPU seconds of the API process

    def add(self, other: "Result") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.client_cpu += other.client_cpu
        self.server_cpu += other.server_cpu

    def cpu_ms(self, seconds: float) -> float:
        return seconds / self.requests * 1000 if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The ``q`` quantile of the request latencies, in milliseconds."""
        return percentile(self.latencies, q) * 1000


# --- data --------------------------------------------------------------------------------------


async def load_data(conn: asyncpg.Connection) -> list[str]:
    """Three days of minute rows per producer and content type, plus images and duplicates; returns
    some image ids. ``cdc_ts`` stays NULL: bench rows must not make the freshness probe look fresh."""
    await conn.execute("""
        INSERT INTO public.upload_stats (window_start, window_end, producer, content_type, uploads, bytes, accepted,
            duplicates_exact, duplicates_near, duplicates, rejected, revision, late_events, final, updated_at,
            cdc_op, cdc_ts)
        SELECT t, t + interval '1 minute', p, ct, 5 + (extract(minute FROM t)::int % 7), 50000, 4, 1, 0, 1, 0, 1, 0,
               true, t, 'c', NULL
        FROM generate_series($1::timestamptz, $1::timestamptz + interval '3 days' - interval '1 minute',
                             interval '1 minute') t,
             unnest($2::text[]) p, unnest($3::text[]) ct
        ON CONFLICT DO NOTHING""", BENCH_DAY, PRODUCERS, CONTENT_TYPES)
    await conn.execute("""
        INSERT INTO public.images (image_id, producer, sha256, size, content_type, width, height, storage_key,
            received_at, status, duplicate_of, duplicate_kind, distance, lateness, processed_at, cdc_op, cdc_ts)
        SELECT md5('bench' || i)::uuid::text, ($2::text[])[1 + i % cardinality($2::text[])],
               md5('s' || i) || md5('t' || i), 50000,
               'image/jpeg', 640, 480, 'sha256/xx', $1::timestamptz + i * interval '5 seconds',
               CASE WHEN i % 4 = 0 THEN 'duplicate' ELSE 'accepted' END,
               CASE WHEN i % 4 = 0 THEN md5('bench' || (i - 1))::uuid::text END,
               CASE WHEN i % 4 = 0 THEN (CASE WHEN i % 8 = 0 THEN 'near' ELSE 'exact' END) END,
               CASE WHEN i % 4 = 0 THEN i % 5 END, 'on_time', $1::timestamptz + i * interval '5 seconds', 'c', NULL
        FROM generate_series(1, 20000) i
        ON CONFLICT DO NOTHING""", BENCH_DAY, PRODUCERS)
    await conn.execute("""
        INSERT INTO public.duplicates (duplicate_of, image_id, duplicate_kind, distance, producer, sha256, received_at,
            processed_at, cdc_op, cdc_ts)
        SELECT duplicate_of, image_id, duplicate_kind, distance, producer, sha256, received_at, processed_at, 'c', NULL
        FROM public.images WHERE producer = ANY($1::text[]) AND status = 'duplicate'
        ON CONFLICT DO NOTHING""", PRODUCERS)
    await conn.execute("ANALYZE public.upload_stats; ANALYZE public.images; ANALYZE public.duplicates")
    rows = await conn.fetch("SELECT image_id FROM public.images WHERE producer = ANY($1::text[]) LIMIT 200",
                            PRODUCERS)
    return [r["image_id"] for r in rows]


async def drop_data(conn: asyncpg.Connection) -> None:
    for table in ("upload_stats", "images", "duplicates"):
        await conn.execute(f"DELETE FROM public.{table} WHERE producer = ANY($1::text[])", PRODUCERS)


# --- the endpoints and their statements ----------------------------------------------------------


@dataclasses.dataclass
class Endpoint:
    name: str
    path: str
    params: dict[str, str]
    statements: Callable[[], list[Sql]]  # what the endpoint runs, built by the same query objects


def endpoints(image_ids: list[str]) -> list[Endpoint]:
    now = BENCH_DAY + timedelta(days=3)
    scope = Scope(None)
    day = {"from": format_time(BENCH_DAY + timedelta(days=1)), "to": format_time(BENCH_DAY + timedelta(days=2))}
    hour = {"from": format_time(BENCH_DAY + timedelta(hours=30)),
            "to": format_time(BENCH_DAY + timedelta(hours=31))}
    series_day = {**day, "interval": "hour", "group_by": "producer"}
    series_min = {**hour, "interval": "minute", "producer": PRODUCERS[0]}
    top = {**day, "by": "bytes"}
    dups = {**day, "kind": "exact", "limit": "100"}

    def parsed(cls: Any, params: dict[str, str]) -> Any:
        return cls.parse(list(params.items()), scope, now)

    return [
        Endpoint("summary (1 day)", "/v1/stats/summary", day, lambda: [parsed(SummaryQuery, day).sql()]),
        Endpoint("uploads hour x producer (1 day)", "/v1/stats/uploads", series_day,
                 lambda: [parsed(UploadsQuery, series_day).sql()]),
        Endpoint("uploads minute, 1 producer (1 h)", "/v1/stats/uploads", series_min,
                 lambda: [parsed(UploadsQuery, series_min).sql()]),
        Endpoint("top producers by bytes (1 day)", "/v1/stats/top", top, lambda: [parsed(TopQuery, top).sql()]),
        Endpoint("duplicates page of 100 + totals", "/v1/duplicates", dups,
                 lambda: [parsed(DuplicatesQuery, dups).sql(), parsed(DuplicatesQuery, dups).count_sql()]),
        Endpoint("image by id", f"/v1/images/{image_ids[0]}", {},
                 lambda: [ImageQuery.parse(image_ids[0], []).sql()]),
    ]


# --- drivers -----------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process (from /proc), in seconds; 0 for an API not started here."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(seconds: float, concurrency: int, one: Callable[[], Awaitable[bool]], result: Result,
                server_pid: int | None = None) -> Result:
    stop = time.perf_counter() + seconds
    cpu, server_cpu = self_cpu_seconds(), proc_cpu_seconds(server_pid)

    async def worker() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            ok = await one()
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            result.errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.client_cpu = self_cpu_seconds() - cpu
    result.server_cpu = proc_cpu_seconds(server_pid) - server_cpu
    return result


async def api_round(session: aiohttp.ClientSession, url: str, headers: dict[str, str], endpoint: Endpoint,
                    seconds: float, concurrency: int, server_pid: int | None = None) -> Result:
    target = f"{url}{endpoint.path}" + (f"?{urlencode(endpoint.params)}" if endpoint.params else "")

    async def one() -> bool:
        async with session.get(target, headers=headers) as response:
            await response.read()
            return response.status == 200

    return await drive(seconds, concurrency, one, Result("api", endpoint.name), server_pid)


async def direct_round(pool: asyncpg.Pool, endpoint: Endpoint, seconds: float, concurrency: int) -> Result:
    statements = endpoint.statements()

    async def one() -> bool:
        async with pool.acquire() as conn:
            for sql in statements:
                await conn.fetch(sql.text, *sql.args)
        return True

    return await drive(seconds, concurrency, one, Result("direct", endpoint.name))


# --- the API process ---------------------------------------------------------------------------


async def start_api(env: dict[str, str], keys: Path, pool_max: int, log: Path, tree: Path = REPO) -> ServiceProcess:
    """A stats API process running the code of ``tree`` (this checkout, or a baseline one)."""
    api_env = {**env, "IMGSTREAM_TOKEN_KEYS_FILE": str(keys), "IMGSTREAM_STATS_POOL_MAX": str(pool_max),
               "IMGSTREAM_STATS_INCLUDE_SYNTHETIC": "1",
               "IMGSTREAM_STATS_POOL_MIN": str(pool_max)}  # default log level: every request logged, as in production
    try:
        return await start_service("api.stats", cwd=tree, env=api_env, port_variable="IMGSTREAM_STATS_PORT", log=log,
                                   ready_path="/readyz", timeout=60)
    except ServiceNotReady as exc:
        raise SystemExit(str(exc)) from None


async def main(args: argparse.Namespace) -> int:
    env = load_env_file(Path(args.env))
    stack = StackConfig.from_env(env)
    config = StatsConfig.from_env({**env, "IMGSTREAM_STATS_POOL_MAX": str(args.pool),
                                   "IMGSTREAM_STATS_INCLUDE_SYNTHETIC": "1"})
    owner = await connect(str(stack.postgres.dsn))
    api = baseline = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    try:
        print(f"loading the bench data set ({len(PRODUCERS)} producers x {len(CONTENT_TYPES)} types x 3 days of "
              "minutes, 20k images)...", flush=True)
        image_ids = await load_data(owner)
        if args.api_url:
            url, token = args.api_url, args.token
        else:
            keys = workdir / "token-keys.json"
            ensure_key_file(keys)
            api = await start_api(env, keys, args.pool, workdir / "stats.log")
            url = api.url
            token = KeyRing.load(keys).issue("bench-analyst", "analyst", ttl=timedelta(hours=1))
        headers = {"Authorization": f"Bearer {token}"}
        apis = {"api": (url, headers, api.pid if api else None)}
        if args.baseline:
            # The same endpoints against a stats API running other code, in the same rounds.
            baseline = await start_api(env, keys, args.pool, workdir / "baseline.log", Path(args.baseline).resolve())
            apis["baseline"] = (baseline.url, headers, baseline.pid)
        # The very pool the API opens: same size, session settings and release behaviour.
        pool = await open_pool(dataclasses.replace(config, pool_min=args.pool))
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        results: dict[tuple[str, str], Result] = {}
        async with aiohttp.ClientSession(connector=connector) as session:
            for endpoint in endpoints(image_ids):
                # warm both paths (prepared statements, connections) before measuring
                for a_url, a_headers, _ in apis.values():
                    await api_round(session, a_url, a_headers, endpoint, 0.5, args.concurrency)
                await direct_round(pool, endpoint, 0.5, args.concurrency)
                modes = [*apis, "direct"]
                for round_no in range(args.rounds):
                    shift = round_no % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        if mode in apis:
                            a_url, a_headers, a_pid = apis[mode]
                            r = await api_round(session, a_url, a_headers, endpoint, args.seconds, args.concurrency,
                                                a_pid)
                        else:
                            r = await direct_round(pool, endpoint, args.seconds, args.concurrency)
                        results.setdefault((endpoint.name, mode), Result(mode, endpoint.name)).add(r)
            # The HTTP floor: /healthz does no auth, no query, no JSON of note.
            floor_endpoint = Endpoint("(HTTP floor: GET /healthz)", "/healthz", {}, lambda: [])
            floors = {name: Result(name, floor_endpoint.name) for name in apis}
            for _ in range(args.rounds):
                for name, (a_url, _, a_pid) in apis.items():
                    floors[name].add(await api_round(session, a_url, {}, floor_endpoint, args.seconds,
                                                     args.concurrency, a_pid))
            floor = floors["api"]
        await pool.close()
        print(f"\nconcurrency {args.concurrency}, pool {args.pool}, {args.rounds} x {args.seconds:g} s per mode, "
              f"{os.cpu_count()} cores shared with the stack\n")
        header = f"{'endpoint':36} {'api req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'direct req/s':>13} " \
                 f"{'p50 ms':>7} {'p99 ms':>7} {'api/direct':>10} {'ceiling':>8} {'api/ceil':>8} " \
                 f"{'CPU ms/req: api srv+cli':>24} {'direct':>7}"
        print(header)
        print("-" * len(header))
        report = []
        ratios = []
        of_ceiling: dict[str, list[float]] = {name: [] for name in apis}
        for endpoint in endpoints(image_ids):
            a, d = results[(endpoint.name, "api")], results[(endpoint.name, "direct")]
            ratio = a.rate / d.rate if d.rate else float("nan")
            ratios.append(ratio)
            # What an API could reach at best: the query's own cost plus the bare HTTP request's,
            # paid one after the other (1 / (1/direct + 1/floor)).
            ceiling = 1 / (1 / d.rate + 1 / floor.rate) if d.rate and floor.rate else float("nan")
            for name in apis:
                of_ceiling[name].append(results[(endpoint.name, name)].rate / ceiling)
            errors = f"  ({a.errors} API errors)" if a.errors else ""
            print(f"{endpoint.name:36} {a.rate:10.0f} {a.pct(0.5):7.1f} {a.pct(0.99):7.1f} {d.rate:13.0f} "
                  f"{d.pct(0.5):7.1f} {d.pct(0.99):7.1f} {ratio:10.2f} {ceiling:8.0f} {a.rate / ceiling:8.2f} "
                  f"{a.cpu_ms(a.server_cpu):>15.2f} + {a.cpu_ms(a.client_cpu):<6.2f} {d.cpu_ms(d.client_cpu):7.2f}"
                  f"{errors}")
            if "baseline" in apis:
                b = results[(endpoint.name, "baseline")]
                print(f"{'  baseline':36} {b.rate:10.0f} {b.pct(0.5):7.1f} {b.pct(0.99):7.1f} {'':13} {'':7} {'':7} "
                      f"{b.rate / d.rate if d.rate else float('nan'):10.2f} {'':8} {b.rate / ceiling:8.2f} "
                      f"{b.cpu_ms(b.server_cpu):>15.2f} + {b.cpu_ms(b.client_cpu):<6.2f}")
            report.append({"endpoint": endpoint.name, "api_rps": a.rate, "api_p50_ms": a.pct(0.5),
                           "api_p99_ms": a.pct(0.99), "direct_rps": d.rate, "direct_p50_ms": d.pct(0.5),
                           "direct_p99_ms": d.pct(0.99), "ratio": ratio, "api_errors": a.errors,
                           "api_server_cpu_ms": a.cpu_ms(a.server_cpu), "api_client_cpu_ms": a.cpu_ms(a.client_cpu),
                           "direct_cpu_ms": d.cpu_ms(d.client_cpu), "ceiling_rps": ceiling,
                           "api_of_ceiling": a.rate / ceiling,
                           **({"baseline_rps": results[(endpoint.name, "baseline")].rate} if "baseline" in apis else {})})
        print(f"{floor.endpoint:36} {floor.rate:10.0f} {floor.pct(0.5):7.1f} {floor.pct(0.99):7.1f} {'':13} {'':7} "
              f"{'':7} {'':10} {floor.cpu_ms(floor.server_cpu):>15.2f} + {floor.cpu_ms(floor.client_cpu):<6.2f}")
        if "baseline" in floors:
            f = floors["baseline"]
            print(f"{'  baseline floor':36} {f.rate:10.0f} {f.pct(0.5):7.1f} {f.pct(0.99):7.1f}")
        print(f"\ngeometric mean api/direct: {statistics.geometric_mean(ratios):.2f}")
        for name, values in of_ceiling.items():
            print(f"{name}: geometric mean of the composed ceiling {statistics.geometric_mean(values):.2f}, "
                  f"lowest {min(values):.2f} (aim >= 0.85 on every endpoint)")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 1 if any(r["api_errors"] for r in report) else 0
    finally:
        for process in (api, baseline):
            if process is not None:
                process.stop(20)
        if not args.keep:
            await drop_data(owner)
        await owner.close()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--pool", type=int, default=8, help="PostgreSQL connections on each side (default 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per round (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating api/direct rounds per endpoint")
    parser.add_argument("--env", default=str(REPO / ".stack" / "env"), help="stack env file")
    parser.add_argument("--api-url", help="use a running stats API instead of starting one")
    parser.add_argument("--token", help="analyst token for --api-url (whose process must run with "
                        "IMGSTREAM_STATS_INCLUDE_SYNTHETIC=1: the bench producers are synthetic)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the bench data set")
    parser.add_argument("--baseline", help="also bench a stats API running the code in this directory "
                                           "(e.g. an extracted older revision), in the same rounds")
    quiet.add_arguments(parser)
    args = parser.parse_args()
    quiet.wait_as_told(args)
    # the same event loop for both sides (and the one the API process runs on)
    with testing.synthetic_run(load_env_file(Path(args.env)), "stats_api_vs_direct"), \
            asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        return runner.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
