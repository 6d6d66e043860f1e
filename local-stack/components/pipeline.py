"""The pipeline job on the stack's Flink cluster: submitted once the heartbeat runs (resumed from
the savepoint ``make down`` took, if any), stopped with a savepoint before the TaskManager stops.

Not a process of its own: these are steps ``stack.py`` runs around the ``heartbeat`` and
``flink-taskmanager`` components.
"""

from __future__ import annotations

import asyncio
import subprocess

from component import Context

#: Where ``make down`` leaves the savepoint of the pipeline job, for the next ``make up`` to resume.
SAVEPOINT_NOTE = "pipeline.savepoint"


def _submit(ctx: Context, *args: str) -> subprocess.CompletedProcess[str]:
    env = ctx.base_env()
    env["PYTHONPATH"] = str(ctx.paths.root)
    return subprocess.run([str(ctx.paths.venv_python), "-m", "flink_jobs.submit", *args], capture_output=True,
                          text=True, timeout=900, env=env, cwd=ctx.paths.root)


def _submit_sync(ctx: Context) -> None:
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


async def submit(ctx: Context) -> None:
    """Run the pipeline job (after the heartbeat is up)."""
    await asyncio.to_thread(_submit_sync, ctx)


def savepoint(ctx: Context) -> None:
    """Before the cluster stops: stop the pipeline with a savepoint so no state is lost."""
    result = _submit(ctx, "savepoint")
    if result.returncode == 0 and "savepoint " in result.stdout:
        location = result.stdout.rsplit("savepoint ", 1)[1].strip()
        (ctx.paths.run / SAVEPOINT_NOTE).write_text(location + "\n")
        print(f"  flink    pipeline stopped with savepoint {location}", flush=True)
