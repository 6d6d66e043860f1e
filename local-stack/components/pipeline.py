"""The pipeline job on the stack's Flink cluster: started once the heartbeat runs - resumed from
its newest completed checkpoint or savepoint, never silently empty - and stopped with a savepoint
before the TaskManager stops.

Not a process of its own: these are steps ``stack.py`` runs around the ``heartbeat`` and
``flink-taskmanager`` components. The decisions live in ``flink_jobs.submit`` (``up``/``down``)
and ``flink_jobs.restore``, run in a subprocess (PyFlink's client).
"""

from __future__ import annotations

import asyncio
import subprocess

from component import Context


def _submit(ctx: Context, *args: str) -> subprocess.CompletedProcess[str]:
    env = ctx.base_env()
    env["PYTHONPATH"] = str(ctx.paths.root)
    env["IMGSTREAM_STACK_DIR"] = str(ctx.paths.state)
    return subprocess.run([str(ctx.paths.venv_python), "-m", "flink_jobs.submit", *args], capture_output=True,
                          text=True, timeout=1800, env=env, cwd=ctx.paths.root)


def _submit_sync(ctx: Context) -> None:
    """Leave a running pipeline alone, else resume it; a refusal fails ``make up`` loudly."""
    result = _submit(ctx, "up")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        # a refusal (flink_jobs.submit.Refused) is the end of the output: why, and what to do
        refusal = output[output.index("REFUSED:"):] if "REFUSED:" in output else output[-3000:]
        raise RuntimeError(f"pipeline not started:\n{refusal}")
    for line in result.stdout.strip().splitlines()[-2:]:
        print(f"  flink    {line}", flush=True)


async def submit(ctx: Context) -> None:
    """Run the pipeline job (after the heartbeat is up)."""
    await asyncio.to_thread(_submit_sync, ctx)


def savepoint(ctx: Context) -> None:
    """Before the cluster stops: stop the pipeline with a savepoint so no state is lost (the
    next ``make up`` resumes from it or from a newer checkpoint)."""
    result = _submit(ctx, "down")
    if result.returncode == 0 and "savepoint " in result.stdout:
        print(f"  flink    {result.stdout.strip().splitlines()[-1]}", flush=True)
    elif result.returncode != 0:
        print(f"  WARNING  pipeline savepoint failed (the next make up resumes from the newest checkpoint):\n"
              f"{(result.stdout + result.stderr)[-1500:]}", flush=True)
