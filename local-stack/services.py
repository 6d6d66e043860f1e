"""imgstream's own services on the local stack: the upload gateway and the stats API.

An extension module of ``components.py``: each service is a tracked Python process from the
repo's venv, configured by the ``.stack/env`` values in its environment, checked by ``/healthz``.
After the gateway is healthy, a small demo set of real images is ingested (idempotently).
"""

from __future__ import annotations

from pathlib import Path

import health
from components import BOOTSTRAP_HOOKS, PORTS, Component, Context

ROOT = Path(__file__).resolve().parent.parent


def _python_module(module: str):  # noqa: ANN202 - returns an argv builder
    def argv(ctx: Context) -> list[str]:
        return [str(ctx.paths.venv_python), "-m", module]

    return argv


def _ensure_token_keys(ctx: Context) -> None:
    from imgstream.tokens import ensure_key_file

    ensure_key_file(ctx.paths.secrets / "token-keys.json")


def _healthz(port: int):  # noqa: ANN202
    async def check(ctx: Context) -> str | None:
        return await health.http_ok(f"http://127.0.0.1:{port}/healthz")

    return check


def _service_env(prefix: str, port: int, **extra: str):  # noqa: ANN202
    def env(ctx: Context) -> dict[str, str]:
        return {f"{prefix}PORT": str(port), f"{prefix}HOST": "127.0.0.1", "PYTHONPATH": str(ctx.paths.root),
                **extra}

    return env


async def _demo_ingest(ctx: Context) -> None:
    import demo

    await demo.ingest(ctx)


_services: list[Component] = []
if (ROOT / "api" / "gateway" / "__main__.py").exists():
    _services.append(Component(
        "gateway", (PORTS["gateway"],), f"http://127.0.0.1:{PORTS['gateway']}/v1/images", "-",
        _python_module("api.gateway"), _healthz(PORTS["gateway"]), _ensure_token_keys,
        depends=("s3", "kafka"), start_timeout=60,
        extra_env=_service_env("IMGSTREAM_GATEWAY_", PORTS["gateway"]),
    ))
    BOOTSTRAP_HOOKS.setdefault("gateway", []).append(_demo_ingest)
if (ROOT / "api" / "stats" / "__main__.py").exists():
    _services.append(Component(
        "stats-api", (PORTS["stats_api"],), f"http://127.0.0.1:{PORTS['stats_api']}/v1/stats/summary", "-",
        _python_module("api.stats"), _healthz(PORTS["stats_api"]), _ensure_token_keys,
        depends=("postgres",), start_timeout=60,
        # The API only reads: it connects as the read-only analyst role.
        extra_env=_service_env("IMGSTREAM_STATS_", PORTS["stats_api"],
                               IMGSTREAM_STATS_PG_DSN=f"postgresql://analyst@127.0.0.1:{PORTS['postgres']}/imgstream"),
    ))

COMPONENTS: tuple[Component, ...] = tuple(_services)
