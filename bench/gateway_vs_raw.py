"""Upload gateway vs raw S3 PUT + Kafka produce, side by side in one run, on the local stack.

For each image size (default 50 KB and 5 MB) and the same concurrency, alternating rounds of:

* **gateway**: N concurrent producers POST raw image bodies to a gateway process
  (``python -m api.gateway``, started by this script on a free port unless ``--gateway-url``):
  streaming receive + SHA-256 + sniff + markup scan + header probe + perceptual hash +
  S3 PUT (server-verified checksum) + Kafka produce (acks=all, idempotent) + receipt.
* **raw**: the same N concurrent tasks in this process doing only an S3 PUT of the same bytes and
  a Kafka produce of an event-sized record with the same client settings, i.e. the least any
  uploader must do.

Prints uploads/s, MB/s, p50/p99 latency, CPU per upload and the ratio gateway / raw. Each upload
is byte-unique (a JPEG comment carries a nonce), so nothing is deduplicated away. The gateway runs
on a bench bucket and topics of its own, so the pipeline's real data is untouched; objects are
removed at the end unless ``--keep``.

Usage: ``.venv/bin/python bench/gateway_vs_raw.py [--concurrency 8] [--rounds 2] [--sizes 50k,5m]
[--baseline DIR]``; with ``--baseline`` a second gateway runs the code in ``DIR`` (say
``git archive <rev> | tar -x -C DIR``) in the same rotating rounds, for before/after numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.percentiles import percentile  # noqa: E402
from bench import quiet  # noqa: E402
from imgstream.adapters.kafka import KafkaEventPublisher, TopicSpec, ensure_topics  # noqa: E402
from imgstream.adapters.s3 import S3ObjectStore  # noqa: E402
from imgstream.config import StackConfig, load_env_file  # noqa: E402
from api.common.process import ServiceNotReady, ServiceProcess, start_service  # noqa: E402
from imgstream.domain.producers import synthetic  # noqa: E402
from imgstream.domain.tokens import KeyRing, ensure_key_file  # noqa: E402
from tests.fixtures.images import sized_jpeg, with_comment  # noqa: E402

BENCH_BUCKET = "imgstream-bench"
#: Its own topics and bucket keep the pipeline away; the name is synthetic all the same.
BENCH_PRODUCER = synthetic("bench")
GATEWAY_TOPIC = "bench.gateway.uploaded"
RAW_TOPIC = "bench.raw.uploaded"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1000, "m": 1000 * 1000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (from /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def listener_pid(port: int) -> int | None:
    """The pid listening on a loopback port (``ss -ltnp``), to charge its CPU to the uploads."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    marker = "pid="
    if marker not in out:
        return None
    return int(out.split(marker, 1)[1].split(",", 1)[0])


def pids_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_seconds(pid)
        except OSError:
            pass
    return total


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Result:
    mode: str
    size: int
    uploads: int = 0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    backend_cpu: float = 0.0
    errors: int = 0

    def add(self, other: "Result") -> None:
        self.uploads += other.uploads
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.server_cpu += other.server_cpu
        self.client_cpu += other.client_cpu
        self.backend_cpu += other.backend_cpu
        self.errors += other.errors

    @property
    def rate(self) -> float:
        return self.uploads / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The ``q`` quantile of the request latencies, in milliseconds."""
        return percentile(self.latencies, q) * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "size_bytes": self.size, "uploads": self.uploads, "errors": self.errors,
            "uploads_per_s": round(self.rate, 1), "mb_per_s": round(self.rate * self.size / 1e6, 2),
            "p50_ms": round(self.pct(0.50), 1), "p99_ms": round(self.pct(0.99), 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1) if self.latencies else None,
            "server_cpu_ms_per_upload": round(1000 * self.server_cpu / self.uploads, 2) if self.uploads else None,
            "client_cpu_ms_per_upload": round(1000 * self.client_cpu / self.uploads, 2) if self.uploads else None,
            "s3_kafka_cpu_ms_per_upload": round(1000 * self.backend_cpu / self.uploads, 2) if self.uploads else None,
        }


async def drive(count: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> tuple[list[float], int, float]:
    """Run ``one(i)`` for i in range(count) with ``concurrency`` workers; latencies, errors, wall time."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            ok = await one(i)
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def start_gateway(env: dict[str, str], workdir: Path, tree: Path = REPO) -> tuple[ServiceProcess, Path]:
    """A gateway process running the code of ``tree`` (this checkout, or a baseline one)."""
    keys = workdir / "token-keys.json"
    ensure_key_file(keys)
    child_env = {**env, "IMGSTREAM_GATEWAY_TOPIC": GATEWAY_TOPIC, "IMGSTREAM_S3_BUCKET": BENCH_BUCKET,
                 "IMGSTREAM_TOKEN_KEYS_FILE": str(keys), "IMGSTREAM_GATEWAY_RATE": "0",
                 "IMGSTREAM_GATEWAY_LOG_LEVEL": "WARNING", "IMGSTREAM_GATEWAY_PRESTOP_DELAY": "0"}
    try:
        service = await start_service("api.gateway", cwd=tree, env=child_env, port_variable="IMGSTREAM_GATEWAY_PORT",
                                      log=workdir / "gateway.log", ready_path="/readyz", timeout=90)
    except ServiceNotReady as exc:
        raise SystemExit(str(exc)) from None
    return service, keys


def uniquify(base: bytes, tag: str, i: int) -> bytes:
    return with_comment(base, f"bench {tag} {i} {uuid.uuid4().hex}".encode())


async def gateway_round(url: str, token: str, base: bytes, count: int, concurrency: int, pid: int | None,
                        tag: str, backends: list[int]) -> Result:
    bodies = [uniquify(base, tag, i) for i in range(count)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> bool:
            async with session.post(f"{url}/v1/images", data=bodies[i], headers=headers) as response:
                await response.read()
                return response.status == 201

        await one(0)  # warm the connection and the server's code paths
        cpu0, server0, back0 = self_cpu_seconds(), (proc_cpu_seconds(pid) if pid else 0.0), pids_cpu(backends)
        latencies, errors, wall = await drive(count, concurrency, one)
        cpu1, server1, back1 = self_cpu_seconds(), (proc_cpu_seconds(pid) if pid else 0.0), pids_cpu(backends)
    return Result("gateway", len(base), count, wall, latencies, server1 - server0, cpu1 - cpu0, back1 - back0, errors)


async def raw_round(store: S3ObjectStore, publisher: KafkaEventPublisher, base: bytes, count: int,
                    concurrency: int, tag: str, backends: list[int]) -> Result:
    bodies = [uniquify(base, tag, i) for i in range(count)]
    event = json.dumps({"image_id": str(uuid.uuid4()), "producer": BENCH_PRODUCER, "sha256": "0" * 64, "phash": "0" * 16,
                        "size": len(base), "content_type": "image/jpeg", "width": 1, "height": 1,
                        "storage_key": "x" * 80, "received_at": "2026-01-01T00:00:00.000Z",
                        "schema_version": 1, "event_type": "image.uploaded"}).encode()

    async def one(i: int) -> bool:
        key = f"bench/raw/{tag}/{i}"
        await store.put(key, bodies[i], size=len(bodies[i]), content_type="image/jpeg")
        await publisher.publish(RAW_TOPIC, key.encode(), event)
        return True

    await one(0)
    cpu0, back0 = self_cpu_seconds(), pids_cpu(backends)
    latencies, errors, wall = await drive(count, concurrency, one)
    return Result("raw", len(base), count, wall, latencies, 0.0, self_cpu_seconds() - cpu0,
                  pids_cpu(backends) - back0, errors)


async def main(args: argparse.Namespace) -> int:
    env = load_env_file(Path(args.env)) if Path(args.env).exists() else {}
    env.update({k: v for k, v in os.environ.items() if k.startswith("IMGSTREAM_")})
    stack = StackConfig.from_env(env)
    bench_s3 = dataclasses.replace(stack.s3, bucket=BENCH_BUCKET)
    # The raw client uses the cheapest sound settings: unsigned payload, no checksum.
    store = S3ObjectStore(bench_s3, payload_signing=False, max_pool_connections=max(16, args.concurrency * 2))
    await store.start()
    await store.ensure_bucket()
    await ensure_topics(stack.kafka, [TopicSpec(GATEWAY_TOPIC, 3), TopicSpec(RAW_TOPIC, 3)])
    publisher = KafkaEventPublisher(stack.kafka, client_id="bench-raw")
    await publisher.start()

    workdir = Path(tempfile.mkdtemp(prefix="imgstream-bench-"))
    service = baseline = None
    if args.gateway_url:
        url, token, pid = args.gateway_url, args.token, None
    else:
        service, keys = await start_gateway(env, workdir)
        url, token, pid = service.url, KeyRing.load(keys).issue(BENCH_PRODUCER, "producer"), service.pid
    gateways = {"gateway": (url, token, pid)}
    if args.baseline:
        # The same bench against a gateway running other code (e.g. `git archive <rev> | tar -x`),
        # in the same rounds: before/after measured side by side on the same noisy machine.
        (workdir / "baseline").mkdir()
        baseline, base_keys = await start_gateway(env, workdir / "baseline", Path(args.baseline).resolve())
        gateways["baseline"] = (baseline.url, KeyRing.load(base_keys).issue(BENCH_PRODUCER, "producer"),
                                baseline.pid)
    modes = [*gateways, "raw"]

    from urllib.parse import urlsplit

    backends = [p for p in (listener_pid(urlsplit(stack.s3.endpoint_url).port or 80),
                            listener_pid(int(stack.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])))
                if p is not None]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(f"# gateway {url} (pid {pid}), concurrency {args.concurrency}, rounds {args.rounds}, "
          f"{os.cpu_count()} cores shared by client, gateway, s3 server and Kafka "
          f"(CPU also sampled from pids {backends})", flush=True)
    totals: dict[tuple[str, int], Result] = {}
    try:
        for size in sizes:
            print(f"# preparing a real {size / 1e6:.2f} MB JPEG", flush=True)
            base = sized_jpeg(size)
            count = args.count or max(args.concurrency * 4, int(args.megabytes * 1e6 / size))
            for round_no in range(args.rounds):
                tag = f"{size}-{round_no}-{uuid.uuid4().hex[:6]}"
                shift = round_no % len(modes)  # rotate the order: no mode always runs first
                for mode in modes[shift:] + modes[:shift]:
                    if mode in gateways:
                        g_url, g_token, g_pid = gateways[mode]
                        result = await gateway_round(g_url, g_token, base, count, args.concurrency, g_pid,
                                                     f"{mode}-{tag}", backends)
                        result.mode = mode
                    else:
                        result = await raw_round(store, publisher, base, count, args.concurrency, tag, backends)
                    totals.setdefault((mode, size), Result(mode, len(base))).add(result)
                    print(f"  round {round_no} {mode:7s} {len(base)/1e6:6.2f} MB: {result.rate:7.1f} uploads/s, "
                          f"p50 {result.pct(0.5):7.1f} ms, errors {result.errors}", flush=True)
    finally:
        await publisher.close()
        for process in (service, baseline):
            if process is not None:
                process.stop(60)

    rows = []
    print()
    print(f"{'mode':8s} {'size':>8s} {'uploads':>7s} {'up/s':>8s} {'MB/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'gw CPU ms/up':>12s} {'client ms/up':>12s} {'s3+kafka ms/up':>14s}")
    for size in sizes:
        for mode in modes:
            summary = totals[(mode, size)].summary()
            rows.append(summary)
            print(f"{mode:8s} {summary['size_bytes'] / 1e6:7.2f}M {summary['uploads']:7d} {summary['uploads_per_s']:8.1f} "
                  f"{summary['mb_per_s']:7.2f} {summary['p50_ms']:8.1f} {summary['p99_ms']:8.1f} "
                  f"{summary['server_cpu_ms_per_upload'] or 0:12.2f} {summary['client_cpu_ms_per_upload'] or 0:12.2f} "
                  f"{summary['s3_kafka_cpu_ms_per_upload'] or 0:14.2f}")
    print()
    ratios = {}
    for size in sizes:
        gateway, raw = totals[("gateway", size)], totals[("raw", size)]
        ratios[size] = round(gateway.rate / raw.rate, 3) if raw.rate else None
        print(f"gateway / raw throughput at {gateway.size / 1e6:.2f} MB: {ratios[size]}")
        if "baseline" in gateways:
            before = totals[("baseline", size)]
            print(f"baseline / raw throughput at {before.size / 1e6:.2f} MB: "
                  f"{round(before.rate / raw.rate, 3) if raw.rate else None}; gateway CPU per upload "
                  f"{1000 * before.server_cpu / max(1, before.uploads):.2f} ms before, "
                  f"{1000 * gateway.server_cpu / max(1, gateway.uploads):.2f} ms now")
    if args.json:
        Path(args.json).write_text(json.dumps({"concurrency": args.concurrency, "rounds": args.rounds, "rows": rows,
                                               "ratios": {str(k): v for k, v in ratios.items()}}, indent=2))
    if not args.keep:
        keys_to_drop = [o.key async for o in store.list("")]
        for key in keys_to_drop:
            await store.delete(key)
        print(f"# removed {len(keys_to_drop)} bench objects from {BENCH_BUCKET}")
        try:
            await store.client.delete_bucket(Bucket=BENCH_BUCKET)
        except Exception as exc:  # noqa: BLE001 - an empty bench bucket left behind is harmless
            print(f"# bench bucket kept: {exc}")
    await store.close()
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent producers (default 8)")
    parser.add_argument("--sizes", default="50k,5m", help="image sizes, e.g. 50k,5m")
    parser.add_argument("--rounds", type=int, default=2, help="alternating gateway/raw rounds per size")
    parser.add_argument("--count", type=int, default=0, help="uploads per round (default: ~--megabytes of data)")
    parser.add_argument("--megabytes", type=float, default=60.0, help="data per round when --count is 0")
    parser.add_argument("--env", default=str(REPO / ".stack" / "env"), help="stack env file")
    parser.add_argument("--gateway-url", help="use a running gateway instead of starting one")
    parser.add_argument("--token", help="producer token for --gateway-url")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the bench objects")
    parser.add_argument("--baseline", help="also bench a gateway running the code in this directory "
                                           "(e.g. an extracted older revision), in the same rounds")
    quiet.add_arguments(parser)
    args = parser.parse_args()
    quiet.wait_as_told(args)
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
