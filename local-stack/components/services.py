"""imgstream's own processes on the local stack: the upload gateway, the stats API and the
heartbeat writer.

Each is a tracked Python process from the repo's venv (``python -m <module>``), configured by the
``.stack/env`` values in its environment. The gateway and the stats API are checked by
``/healthz``; the heartbeat by Kafka's health (it has no port).
"""

from __future__ import annotations

from typing import Awaitable, Callable

import health
from component import PORTS, Component, Context


def _python_module(module: str) -> Callable[[Context], list[str]]:
    def argv(ctx: Context) -> list[str]:
        return [str(ctx.paths.venv_python), "-m", module]

    return argv


def _ensure_token_keys(ctx: Context) -> None:
    from imgstream.domain.tokens import ensure_key_file

    ensure_key_file(ctx.paths.secrets / "token-keys.json")


def _healthz(port: int) -> Callable[[Context], Awaitable[str | None]]:
    async def check(ctx: Context) -> str | None:
        return await health.http_ok(f"http://127.0.0.1:{port}/healthz")

    return check


def _service_env(prefix: str, port: int, **extra: str) -> Callable[[Context], dict[str, str]]:
    def env(ctx: Context) -> dict[str, str]:
        return {f"{prefix}PORT": str(port), f"{prefix}HOST": "127.0.0.1", "PYTHONPATH": str(ctx.paths.root),
                **extra}

    return env


def _root_on_path(ctx: Context) -> dict[str, str]:
    return {"PYTHONPATH": str(ctx.paths.root)}


async def _kafka_check(ctx: Context) -> str | None:
    return await health.kafka(ctx.config)


GATEWAY = Component(
    "gateway", (PORTS["gateway"],), f"http://127.0.0.1:{PORTS['gateway']}/v1/images", "-",
    _python_module("api.gateway"), _healthz(PORTS["gateway"]), _ensure_token_keys,
    depends=("s3", "kafka"), start_timeout=60,
    # No load balancer locally to wait for: stop at once (PRESTOP_DELAY is for Kubernetes).
    extra_env=_service_env("IMGSTREAM_GATEWAY_", PORTS["gateway"], IMGSTREAM_GATEWAY_PRESTOP_DELAY="0"),
)

STATS_API = Component(
    "stats-api", (PORTS["stats_api"],), f"http://127.0.0.1:{PORTS['stats_api']}/v1/stats/summary", "-",
    _python_module("api.stats"), _healthz(PORTS["stats_api"]), _ensure_token_keys,
    depends=("postgres",), start_timeout=60,
    # The API only reads: it connects as the read-only analyst role.
    extra_env=_service_env("IMGSTREAM_STATS_", PORTS["stats_api"],
                           IMGSTREAM_STATS_PG_DSN=f"postgresql://analyst@127.0.0.1:{PORTS['postgres']}/imgstream"),
)

# Heartbeats move event time on while nobody uploads, so windows close. The pipeline job is
# submitted once this is up (see pipeline.py): it needs Kafka, Cassandra (schema applied) and a
# TaskManager.
HEARTBEAT = Component(
    "heartbeat", (), "(writes stream.heartbeat into images.uploaded twice a second)", "-",
    _python_module("flink_jobs.heartbeat"), _kafka_check,
    depends=("kafka", "cassandra", "flink-taskmanager"), start_timeout=60, extra_env=_root_on_path,
)
