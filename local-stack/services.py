"""imgstream's own services on the local stack: the upload gateway and the stats API.

An extension module of ``components.py``: each service is a tracked Python process from the
repo's venv, configured by the ``.stack/env`` values in its environment, checked by ``/healthz``.
After the gateway is healthy, a small demo set of real images is ingested (idempotently).
"""

from __future__ import annotations

from pathlib import Path

import asyncio
import subprocess

import health
from components import BOOTSTRAP_HOOKS, PORTS, STOP_HOOKS, Component, Context

ROOT = Path(__file__).resolve().parent.parent


def _python_module(module: str):  # noqa: ANN202 - returns an argv builder
    def argv(ctx: Context) -> list[str]:
        return [str(ctx.paths.venv_python), "-m", module]

    return argv


def _ensure_token_keys(ctx: Context) -> None:
    from imgstream.domain.tokens import ensure_key_file

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


#: Where ``make down`` leaves the savepoint of the pipeline job, for the next ``make up`` to resume.
SAVEPOINT_NOTE = "pipeline.savepoint"


def _submit(ctx: Context, *args: str) -> subprocess.CompletedProcess[str]:
    env = ctx.base_env()
    env["PYTHONPATH"] = str(ctx.paths.root)
    return subprocess.run([str(ctx.paths.venv_python), "-m", "flink_jobs.submit", *args], capture_output=True,
                          text=True, timeout=900, env=env, cwd=ctx.paths.root)


def _submit_pipeline_sync(ctx: Context) -> None:
    """Submit the pipeline unless it runs; resume from the savepoint ``make down`` took, if any."""
    note = ctx.paths.run / SAVEPOINT_NOTE
    if note.exists():
        savepoint = note.read_text().strip()
        result = _submit(ctx, "resume", savepoint)
        if result.returncode == 0:
            note.unlink()
            print(f"  flink    {result.stdout.strip().splitlines()[-1]} (from {savepoint})", flush=True)
            return
        output = result.stdout + result.stderr
        # Flink's reason (e.g. "Cannot map checkpoint/savepoint state for operator ... to the new
        # program": a state-incompatible upgrade) sits above a long client stack trace
        reasons = [line.strip() for line in output.splitlines() if "Cannot map" in line or line.startswith("Caused by")]
        print(f"  WARNING  could not resume the pipeline from {savepoint}; submitting it fresh "
              f"(its dedup and window state starts empty): {' | '.join(reasons[:3]) or output[-1500:]}",
              flush=True)
        note.unlink()
    result = _submit(ctx, "run")
    if result.returncode != 0:
        raise RuntimeError(f"pipeline submission failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"  flink    {result.stdout.strip().splitlines()[-1]}", flush=True)


async def _submit_pipeline(ctx: Context) -> None:
    await asyncio.to_thread(_submit_pipeline_sync, ctx)


def _savepoint_pipeline(ctx: Context) -> None:
    """Before the cluster stops: stop the pipeline with a savepoint so no state is lost."""
    result = _submit(ctx, "savepoint")
    if result.returncode == 0 and "savepoint " in result.stdout:
        location = result.stdout.rsplit("savepoint ", 1)[1].strip()
        (ctx.paths.run / SAVEPOINT_NOTE).write_text(location + "\n")
        print(f"  flink    pipeline stopped with savepoint {location}", flush=True)


#: The upload topic's records carry the broker's append time: the pipeline bounds a gateway's
#: ``received_at`` by it (imgstream/domain/clock.py), so it must not be the gateway's own clock.
UPLOAD_TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}


async def _upload_topic_append_time(ctx: Context) -> None:
    from imgstream.adapters.kafka import ensure_topic_configs
    from imgstream.domain.events import TOPIC_UPLOADED

    if await ensure_topic_configs(ctx.config.kafka, TOPIC_UPLOADED, UPLOAD_TOPIC_CONFIGS):
        print(f"  kafka    {TOPIC_UPLOADED}: records now carry the broker's append time", flush=True)


async def _demo_ingest(ctx: Context) -> None:
    import demo

    await demo.ingest(ctx)


BOOTSTRAP_HOOKS.setdefault("kafka", []).append(_upload_topic_append_time)  # after the topics exist

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

if (ROOT / "flink_jobs" / "heartbeat.py").exists():
    # Heartbeats move event time on while nobody uploads, so windows close. The pipeline job is
    # submitted once this is up: it needs Kafka, Cassandra (schema applied) and a TaskManager.
    _services.append(Component(
        "heartbeat", (), "(writes stream.heartbeat into images.uploaded every second)", "-",
        _python_module("flink_jobs.heartbeat"), lambda ctx: health.kafka(ctx.config),
        depends=("kafka", "cassandra", "flink-taskmanager"), start_timeout=60,
        extra_env=lambda ctx: {"PYTHONPATH": str(ctx.paths.root)},
    ))
    BOOTSTRAP_HOOKS.setdefault("heartbeat", []).append(_submit_pipeline)
    STOP_HOOKS.setdefault("flink-taskmanager", []).append(_savepoint_pipeline)  # needs a live TM

COMPONENTS: tuple[Component, ...] = tuple(_services)
