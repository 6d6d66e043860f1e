"""Operate the jobs on the Flink session cluster: submit, stop with a savepoint, redeploy.

    python -m flink_jobs.submit run [pipeline|passthrough] [--key=value ...]   # detached submit
    python -m flink_jobs.submit savepoint [JOB_NAME]      # stop with savepoint, prints its path
    python -m flink_jobs.submit redeploy [JOB_NAME] [--key=value ...]   # savepoint + resume from it
    python -m flink_jobs.submit resume SAVEPOINT [--key=value ...]      # start from a savepoint (unless running)
    python -m flink_jobs.submit status                    # running jobs

Reads the stack's endpoints from the environment (``.stack/env`` is loaded when present).
``run`` is idempotent: a job with the same name already running is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgstream.config import load_env_file
from imgstream.polling import PollTimeout, until_sync

from flink_jobs.config import KAFKA_CONNECTOR_JAR, PipelineConfig

REPO = Path(__file__).resolve().parent.parent
MODULES = {"pipeline": "flink_jobs.pipeline", "passthrough": "flink_jobs.passthrough"}
#: A stop-with-savepoint of a small job takes seconds; the bound guards a hung cluster.
SAVEPOINT_TIMEOUT_S = 300


def stack_env() -> dict[str, str]:
    """``.stack/env`` overlaid with the process environment."""
    env_file = REPO / ".stack" / "env"
    values = load_env_file(env_file) if env_file.exists() else {}
    values.update(os.environ)
    return values


def _rest(env: Mapping[str, str]) -> str:
    return env.get("IMGSTREAM_FLINK_REST", "http://127.0.0.1:8081").rstrip("/")


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def running_jobs(env: Mapping[str, str]) -> dict[str, str]:
    """``{name: job_id}`` of jobs that are running (or restarting/created)."""
    jobs = _call(f"{_rest(env)}/jobs/overview")["jobs"]
    live = ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING", "RECONCILING")
    return {job["name"]: job["jid"] for job in jobs if job["state"] in live}


def flink_cli() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent / "bin" / "flink"


def flink_python_jar() -> Path:
    import pyflink

    jars = sorted((Path(pyflink.__file__).resolve().parent / "opt").glob("flink-python-*.jar"))
    if not jars:
        raise SystemExit("flink-python jar not found in pyflink/opt")
    return jars[-1]


def run(
    job: str,
    args: Sequence[str],
    env: Mapping[str, str],
    savepoint: str | None = None,
) -> str:
    """Submit ``job`` detached; returns the job id."""
    config = PipelineConfig.from_env(env, args)
    name = config.job_name if job == "pipeline" else f"{config.job_name}-passthrough"
    existing = running_jobs(env).get(name)
    if existing and savepoint is None:
        print(f"{name} already running as {existing}")
        return existing
    jar = env.get("IMGSTREAM_FLINK_KAFKA_JAR") or str(REPO / ".stack" / "lib" / "flink" / KAFKA_CONNECTOR_JAR)
    if not Path(jar).is_file():
        raise SystemExit(f"Kafka connector jar missing: {jar} (run `make jars`)")
    command = ["bash", str(flink_cli()), "run", "-d", "-j", jar]
    # DataStream Python operators are classes of flink-python, which the wheel keeps in opt/:
    # the JobManager needs it on the job's classpath to rebuild the stream graph.
    command += ["-C", flink_python_jar().as_uri()]
    if savepoint:
        command += ["-s", savepoint]
    command += ["-pym", MODULES[job], "-pyfs", f"{REPO / 'flink_jobs'},{REPO / 'imgstream'}", *args]
    process_env = dict(os.environ)
    process_env.update({k: v for k, v in env.items() if k.startswith("IMGSTREAM_")})
    process_env.setdefault("FLINK_CONF_DIR", str(REPO / ".stack" / "conf" / "flink"))
    process_env["PYFLINK_CLIENT_EXECUTABLE"] = sys.executable
    process_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), process_env.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=process_env)
    marker = "Job has been submitted with JobID "
    for line in result.stdout.splitlines():
        if marker in line:
            job_id = line.split(marker, 1)[1].strip()
            print(f"{name} submitted as {job_id}")
            return job_id
    raise SystemExit(f"submission of {name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


def stop_with_savepoint(name: str, env: Mapping[str, str]) -> str:
    """Stop the running job ``name`` with a savepoint; returns the savepoint path."""
    job_id = running_jobs(env).get(name)
    if job_id is None:
        raise SystemExit(f"no running job named {name}")
    trigger = _call(f"{_rest(env)}/jobs/{job_id}/stop", "POST", {"drain": False})["request-id"]

    def completed() -> dict[str, Any] | None:
        status = _call(f"{_rest(env)}/jobs/{job_id}/savepoints/{trigger}")
        return status["operation"] if status["status"]["id"] == "COMPLETED" else None

    try:
        operation = until_sync(completed, f"savepoint of {name}", timeout=SAVEPOINT_TIMEOUT_S, interval=1.0)
    except PollTimeout:
        raise SystemExit(f"savepoint of {name} did not complete within {SAVEPOINT_TIMEOUT_S}s") from None
    if "failure-cause" in operation:
        raise SystemExit(f"savepoint failed: {operation['failure-cause'].get('stack-trace', '')[:2000]}")
    print(f"{name} stopped; savepoint {operation['location']}")
    return str(operation["location"])


def cancel(job_id: str, env: Mapping[str, str]) -> None:
    """Cancel a job by id unless it already ended (tests clean up the jobs they submitted)."""
    state = _call(f"{_rest(env)}/jobs/{job_id}")["state"]
    if state not in ("FINISHED", "CANCELED", "FAILED"):
        _call(f"{_rest(env)}/jobs/{job_id}?mode=cancel", "PATCH")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit(__doc__)
    command, rest = argv[0], argv[1:]
    env = stack_env()
    positional = [a for a in rest if not a.startswith("--")]
    options = [a for a in rest if a.startswith("--")]
    if command == "run":
        run(positional[0] if positional else "pipeline", options, env)
    elif command == "savepoint":
        stop_with_savepoint(positional[0] if positional else PipelineConfig().job_name, env)
    elif command == "redeploy":
        name = positional[0] if positional else PipelineConfig().job_name
        run("pipeline", options, env, savepoint=stop_with_savepoint(name, env))
    elif command == "resume":
        if not positional:
            raise SystemExit("resume needs the savepoint path")
        name = PipelineConfig.from_env(env, options).job_name
        if name in running_jobs(env):
            print(f"{name} already running as {running_jobs(env)[name]}")
        else:
            run("pipeline", options, env, savepoint=positional[0])
    elif command == "status":
        for name, job_id in sorted(running_jobs(env).items()):
            print(f"{job_id}  {name}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
