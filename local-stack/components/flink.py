"""The Flink session cluster: a JobManager and one TaskManager, from the apache-flink wheel's own
distribution, configured by merging our settings into the wheel's ``conf/config.yaml``."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import health
from component import PORTS, Component, Context

FLINK_JM_PROCESS = "1200m"
FLINK_TM_PROCESS = "4g"
FLINK_TM_METASPACE = "768m"
#: The pipeline takes two slots (``clean`` and ``decide`` each get a Python worker); a test or
#: bench job beside it takes up to two more, and a cancelled job frees its slots a little later.
FLINK_TM_SLOTS = 6


def pyflink_home() -> Path:
    """Where the apache-flink wheel keeps its distribution (``bin/``, ``conf/``, ``lib/``)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if nested else value
    return out


def prepare(ctx: Context) -> None:
    import yaml

    home = pyflink_home()
    conf = ctx.paths.conf / "flink"
    conf.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((home / "conf" / "config.yaml").read_text())
    data = ctx.paths.data / "flink"
    for sub in ("checkpoints", "savepoints", "ha", "tmp", "web-upload"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    overrides = {
        "jobmanager": {"bind-host": "127.0.0.1", "rpc": {"address": "127.0.0.1", "port": PORTS["flink_rpc"]},
                       "memory": {"process": {"size": FLINK_JM_PROCESS}}},
        "taskmanager": {"bind-host": "127.0.0.1", "host": "127.0.0.1", "numberOfTaskSlots": FLINK_TM_SLOTS,
                        # every submitted job loads its jars (Kafka connector, PyFlink) into a
                        # fresh class loader; the 256m default ran out after ~40 submissions
                        "memory": {"process": {"size": FLINK_TM_PROCESS},
                                   "jvm-metaspace": {"size": FLINK_TM_METASPACE}}},
        "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": PORTS["flink_rest"]},
        "execution": {"checkpointing": {"dir": f"file://{data / 'checkpoints'}",
                                        "savepoint-dir": f"file://{data / 'savepoints'}",
                                        "externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
                                        "num-retained": 3}},
        "state": {"backend": {"type": "rocksdb"}},
        "restart-strategy": {"type": "exponential-delay"},
        "io": {"tmp": {"dirs": str(data / "tmp")}},
        "web": {"upload": {"dir": str(data / "web-upload")}},
        "python": {"executable": str(ctx.paths.venv_python), "client": {"executable": str(ctx.paths.venv_python)}},
    }
    merged = deep_merge(base, overrides)
    (conf / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    for name in ("log4j-console.properties", "log4j-cli.properties", "log4j.properties", "logback-console.xml"):
        shutil.copy(home / "conf" / name, conf / name)


def env(ctx: Context) -> dict[str, str]:
    """Where the wheel's scripts find our config and put logs and pid files."""
    (ctx.paths.logs / "flink").mkdir(parents=True, exist_ok=True)
    return {"FLINK_CONF_DIR": str(ctx.paths.conf / "flink"), "FLINK_LOG_DIR": str(ctx.paths.logs / "flink"),
            "FLINK_PID_DIR": str(ctx.paths.run / "flink"), "FLINK_IDENT_STRING": "imgstream"}


def jobmanager_argv(ctx: Context) -> list[str]:
    return ["bash", str(pyflink_home() / "bin" / "jobmanager.sh"), "start-foreground"]


def resource_id_file(ctx: Context) -> Path:
    """Where the running TaskManager's resource id is kept (what its health check looks for)."""
    return ctx.paths.run / "flink-taskmanager.resource-id"


def taskmanager_argv(ctx: Context) -> list[str]:
    """Start a TaskManager under a resource id of its own, new at each start: its health check
    then waits for *this* process to register, not for a killed one the JobManager still lists."""
    resource_id = f"imgstream-tm-{uuid.uuid4().hex[:12]}"
    resource_id_file(ctx).parent.mkdir(parents=True, exist_ok=True)
    resource_id_file(ctx).write_text(resource_id + "\n")
    return ["bash", str(pyflink_home() / "bin" / "taskmanager.sh"), "start-foreground",
            "-D", f"taskmanager.resource-id={resource_id}"]


async def jobmanager_check(ctx: Context) -> str | None:
    return await health.http_ok(f"{ctx.config.flink_rest}/overview")


async def taskmanager_check(ctx: Context) -> str | None:
    try:
        resource_id = resource_id_file(ctx).read_text().strip()
    except OSError:
        resource_id = None  # started by an older stackctl: any registered TaskManager will do
    return await health.flink_taskmanager(ctx.config, resource_id)


JOBMANAGER = Component(
    "flink-jobmanager", (PORTS["flink_rest"], PORTS["flink_rpc"]), f"http://127.0.0.1:{PORTS['flink_rest']}",
    FLINK_JM_PROCESS, jobmanager_argv, jobmanager_check, prepare, start_timeout=150, extra_env=env,
)
TASKMANAGER = Component(
    "flink-taskmanager", (), "(registers with the JobManager)", FLINK_TM_PROCESS, taskmanager_argv,
    taskmanager_check, depends=("flink-jobmanager",), start_timeout=150, extra_env=env,
)
