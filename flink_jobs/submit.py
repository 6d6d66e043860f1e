"""Operate the jobs on the Flink session cluster: submit, stop with a savepoint, redeploy.

    python -m flink_jobs.submit run [pipeline|passthrough] [--key=value ...]   # detached submit
    python -m flink_jobs.submit savepoint [JOB_NAME]      # stop with savepoint, prints its path
    python -m flink_jobs.submit redeploy [JOB_NAME] [--key=value ...]   # savepoint + resume from it
    python -m flink_jobs.submit resume SAVEPOINT [--key=value ...]      # start from a savepoint (unless running)
    python -m flink_jobs.submit status                    # running jobs
    python -m flink_jobs.submit up [--key=value ...]      # what `make up` runs: resume, never start empty
    python -m flink_jobs.submit down                      # what `make down` runs: stop with a noted savepoint
    python -m flink_jobs.submit reset [--key=value ...]   # `make flink-reset`: start EMPTY, rebuilt from Kafka

Reads the stack's endpoints from the environment (``.stack/env`` is loaded when present).
``run`` is idempotent: a job with the same name already running is left alone; submissions
are serialised by a lock and every submitted job is recorded (``flink_jobs.restore``).

``up`` resumes the pipeline from its newest completed checkpoint or savepoint (issue 16,
item 1); when there is none although the pipeline ran before, or the resume fails, it refuses
and says what to do instead of starting with empty state (item 3).
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
from imgstream.filelock import exclusive
from imgstream.polling import PollTimeout, until_sync

from flink_jobs import restore
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


def stack_state(env: Mapping[str, str]) -> restore.StackState:
    """The stack's state folder (``IMGSTREAM_STACK_DIR``, else the repo's ``.stack``)."""
    return restore.StackState(Path(env.get("IMGSTREAM_STACK_DIR") or REPO / ".stack"))


#: Job states in which a job holds (or will hold) the cluster's slots and the job's name.
LIVE_STATES = ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING", "RECONCILING")
#: How long a resumed job may take to leave INITIALIZING (its state is mapped then: an
#: incompatible checkpoint fails it there).
RESUME_CHECK_S = 120
#: Restore points tried, newest first, before refusing: a JobManager killed while writing a
#: checkpoint's metadata may leave the newest one unreadable; the one before it still holds
#: the whole state (a few seconds older, replayed from Kafka).
RESUME_ATTEMPTS = 3
#: Flink's words for state that does not map onto the program (every older point fails alike).
INCOMPATIBLE = "Cannot map"
#: What an operator runs to start the pipeline with empty state, named in every refusal.
RESET_COMMAND = "make flink-reset"
#: Parallelism of the stack's pipeline (``up``, ``reset``, ``redeploy``, ``resume``; issue 17):
#: two slot groups (clean + writer, decide) x 2 = 4 of the TaskManager's 6 slots, which leaves
#: 2 for a test's or a bench's own job at parallelism 1. ``--parallelism=N`` or
#: ``IMGSTREAM_FLINK_PARALLELISM`` overrides it; a savepoint restores at any parallelism up to
#: ``PipelineConfig.max_parallelism``.
STACK_PARALLELISM = 2


def stack_args(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``args`` with the stack pipeline's parallelism unless the arguments or the environment set one."""
    if any(a.startswith("--parallelism=") for a in args) or env.get("IMGSTREAM_FLINK_PARALLELISM"):
        return list(args)
    return [f"--parallelism={STACK_PARALLELISM}", *args]


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
    return {job["name"]: job["jid"] for job in jobs if job["state"] in LIVE_STATES}


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
    """Submit ``job`` detached; returns the job id.

    Under the stack's submit lock the running jobs are checked again right before submitting,
    so two submitters at once (two ``make up``) never start two jobs of one name; the job id
    is recorded in the stack's job registry (where its checkpoints are found after a crash).
    """
    config = PipelineConfig.from_env(env, args)
    name = config.job_name if job == "pipeline" else f"{config.job_name}-passthrough"
    state = stack_state(env)
    with exclusive(state.run / "flink-submit.lock", "job submission"):
        existing = running_jobs(env).get(name)
        if existing:
            state.registry.record(existing, name)
            if savepoint is None:
                print(f"{name} already running as {existing}")
                return existing
            raise SystemExit(f"{name} is already running as {existing}: not starting a second one from {savepoint}")
        job_id = _flink_run(job, name, args, env, savepoint)
        state.registry.record(job_id, name)
        return job_id


def _flink_run(job: str, name: str, args: Sequence[str], env: Mapping[str, str], savepoint: str | None) -> str:
    jar = env.get("IMGSTREAM_FLINK_KAFKA_JAR") or str(REPO / ".stack" / "lib" / "flink" / KAFKA_CONNECTOR_JAR)
    if not Path(jar).is_file():
        raise SystemExit(f"Kafka connector jar missing: {jar} (run `make jars`)")
    command = ["bash", str(flink_cli()), "run", "-d", "-j", jar]
    # DataStream Python operators are classes of flink-python, which the wheel keeps in opt/:
    # the JobManager needs it on the job's classpath to rebuild the stream graph.
    command += ["-C", flink_python_jar().as_uri()]
    if savepoint:
        command += ["-s", savepoint]
    command += ["-pym", MODULES[job], "-pyfs", f"{REPO / 'flink_jobs'},{REPO / 'imgstream'}"]
    # "--" ends the CLI's options: without it the CLI takes a leading program argument that is
    # also one of its own options as its own (`--parallelism=2` became `flink run -p 2`, and the
    # program, not told, set parallelism 1 over it: the stack's pipeline ran at 1, not 2)
    command += ["--", *args]
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
    cause = root_cause(result.stdout + "\n" + result.stderr)
    raise SystemExit(f"submission of {name} failed{': ' + cause if cause else ''}\n"
                     f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")  # fmt: skip


def root_cause(output: str, limit: int = 600) -> str:
    """The deepest ``Caused by:`` of a Java stack trace in ``output`` (the Flink CLI's), cut to
    ``limit`` characters; "" when there is none. The tail of the output, shown too, is often
    just the Python driver's "exits with code 1"."""
    causes = [line.strip() for line in output.splitlines() if line.lstrip().startswith("Caused by:")]
    return causes[-1][len("Caused by:"):].strip()[:limit] if causes else ""


#: How long a savepoint waits for the job's tasks to run: a job just submitted, resumed or
#: restarting has tasks still deploying, and Flink refuses to snapshot it.
TASKS_RUNNING_S = 120


def tasks_not_running(job: Mapping[str, Any]) -> dict[str, str]:
    """The tasks (vertex name -> status) of ``job`` (Flink's ``GET /jobs/:id``) that keep a
    savepoint from being taken: all but RUNNING and FINISHED; the job itself when not RUNNING."""
    if job.get("state") != "RUNNING":
        return {"(job)": str(job.get("state"))}
    return {str(v["name"]): str(v["status"]) for v in job.get("vertices", [])
            if v.get("status") not in ("RUNNING", "FINISHED")}  # fmt: skip


def wait_tasks_running(name: str, job_id: str, env: Mapping[str, str], timeout_s: float | None = None) -> None:
    """Return once every task of ``job_id`` runs (within ``timeout_s``, default
    :data:`TASKS_RUNNING_S`); raise naming those that do not."""
    timeout_s = TASKS_RUNNING_S if timeout_s is None else timeout_s
    waiting: dict[str, str] = {}

    def all_running() -> bool | None:
        waiting.clear()
        waiting.update(tasks_not_running(_call(f"{_rest(env)}/jobs/{job_id}")))
        return None if waiting else True

    try:
        until_sync(all_running, f"the tasks of {name}", timeout=timeout_s, interval=1.0)
    except PollTimeout:
        names = ", ".join(f"{task[:60]}: {status}" for task, status in waiting.items())
        raise SystemExit(f"{name} cannot be savepointed yet: after {timeout_s:.0f}s these are not running ({names}); "
                         "see `make flink-status` and try again") from None


def stop_with_savepoint(name: str, env: Mapping[str, str]) -> str:
    """Stop the running job ``name`` with a savepoint (once its tasks all run); returns the
    savepoint path."""
    job_id = running_jobs(env).get(name)
    if job_id is None:
        raise SystemExit(f"no running job named {name}")
    wait_tasks_running(name, job_id, env)
    trigger = _call(f"{_rest(env)}/jobs/{job_id}/stop", "POST", {"drain": False})["request-id"]

    def completed() -> dict[str, Any] | None:
        status = _call(f"{_rest(env)}/jobs/{job_id}/savepoints/{trigger}")
        return status["operation"] if status["status"]["id"] == "COMPLETED" else None

    try:
        operation = until_sync(completed, f"savepoint of {name}", timeout=SAVEPOINT_TIMEOUT_S, interval=1.0)
    except PollTimeout:
        raise SystemExit(f"savepoint of {name} did not complete within {SAVEPOINT_TIMEOUT_S}s") from None
    if "failure-cause" in operation:
        trace = str(operation["failure-cause"].get("stack-trace", "")).strip()
        cause = root_cause(trace) or (trace.splitlines()[0][:600] if trace else "no cause given")
        raise SystemExit(f"savepoint of {name} failed: {cause} (the job keeps running)")
    print(f"{name} stopped; savepoint {operation['location']}")
    return str(operation["location"])


class Refused(SystemExit):
    """The pipeline was not started, on purpose: the message says why and what to do."""


def wait_initialised(job_id: str, env: Mapping[str, str], timeout_s: float = RESUME_CHECK_S) -> None:
    """Return once the job left INITIALIZING (its restored state mapped onto the program);
    raise with Flink's root cause when it failed instead."""
    def left_initialising() -> str | None:
        state = str(_call(f"{_rest(env)}/jobs/{job_id}")["state"])
        return None if state == "INITIALIZING" else state

    try:
        state = until_sync(left_initialising, f"job {job_id} to leave INITIALIZING", timeout=timeout_s, interval=1.0)
    except PollTimeout:
        raise RuntimeError(f"job {job_id} still INITIALIZING after {timeout_s:.0f}s") from None
    if state in ("FAILED", "CANCELED", "FINISHED"):
        root = (_call(f"{_rest(env)}/jobs/{job_id}/exceptions") or {}).get("root-exception") or ""
        raise RuntimeError(f"job {job_id} {state} while restoring: {root.strip()[:1500]}")


def up(args: Sequence[str], env: Mapping[str, str]) -> str:
    """Start the pipeline as ``make up`` does: leave a running one alone; else resume it from
    its newest completed checkpoint or savepoint; start it empty only on its first start.

    Refuses (:class:`Refused`, naming ``make flink-reset``) when the pipeline ran before but
    nothing can be resumed, or when resuming fails: empty state is the operator's decision."""
    config = PipelineConfig.from_env(env, args)
    name, state = config.job_name, stack_state(env)
    with exclusive(state.run / "flink-up.lock", "pipeline start"):
        existing = running_jobs(env).get(name)
        if existing:
            state.registry.record(existing, name)
            print(f"{name} already running as {existing}")
            return existing
        noted = restore.noted_savepoint(state)
        points = restore.restore_points(state, name, [noted] if noted else [])
        if not points:
            known = state.registry.job_ids(name)
            if known or noted:
                raise Refused(
                    f"REFUSED: {name} ran before (jobs {', '.join(known) or '?'}) but no completed checkpoint or "
                    f"savepoint of it is left under {state.flink}; starting it now would lose its dedup index "
                    f"and open windows. Restore one by hand (python -m flink_jobs.submit resume PATH) or run "
                    f"`{RESET_COMMAND}` to start it EMPTY, rebuilt from the upload topic."
                )
            return run("pipeline", args, env)
        failures = []
        for point in points[:RESUME_ATTEMPTS]:
            print(f"resuming {name} from {point}", flush=True)
            try:
                job_id = run("pipeline", args, env, savepoint=str(point.path))
                wait_initialised(job_id, env)
            except (SystemExit, RuntimeError) as exc:
                text = str(exc).strip()
                head, _, rest = text.partition("\n")
                failures.append(f"{point}: {head[:800]}" + (f"\n  ...\n{rest[-1000:]}" if rest else ""))
                if INCOMPATIBLE in text:
                    failures.append("The state does not fit this program: an upgrade changed operator uids or the "
                                    "max parallelism (issue 17's sharded decide stages did both; choosing decide: exact's shards in the JVM changed its uid). "
                                    "Since 2026-12-06 decide: near runs in the JVM (uid decide-near-jvm): a point taken before "
                                    "holds the Python stage's index (uid decide-near), which --near_stage=python resumes.")
                    break  # the program changed: an older point of the same program fails alike
                _cancel_quietly(name, env)
                continue
            if noted is not None:
                state.note.unlink(missing_ok=True)  # consumed (newer checkpoints supersede it)
            return job_id
        raise Refused(
            f"REFUSED: {name} could not resume:\n  " + "\n  ".join(failures) + "\n"
            f"It was NOT started with empty state. Fix the cause (a state-incompatible change must keep its "
            f"operator uids and state), resume another point (python -m flink_jobs.submit resume PATH), "
            f"or run `{RESET_COMMAND}` to start it EMPTY, rebuilt from the upload topic."
        )


def _cancel_quietly(name: str, env: Mapping[str, str]) -> None:
    """Cancel a job of ``name`` left by a failed resume attempt (before trying an older point)."""
    job_id = running_jobs(env).get(name)
    if job_id:
        cancel(job_id, env)


def down(env: Mapping[str, str]) -> str | None:
    """Stop the pipeline with a savepoint and note it for the next ``up`` (``make down``)."""
    name, state = PipelineConfig().job_name, stack_state(env)
    if name not in running_jobs(env):
        return None
    location = stop_with_savepoint(name, env)
    state.run.mkdir(parents=True, exist_ok=True)
    state.note.write_text(location + "\n")
    return location


def reset(args: Sequence[str], env: Mapping[str, str]) -> str:
    """``make flink-reset``: forget every checkpoint and savepoint of the pipeline and start it
    with EMPTY state, reading the upload topic from its earliest offset (so the dedup index and
    the windows are rebuilt from what Kafka still holds). Refuses while the pipeline runs."""
    name, state = PipelineConfig.from_env(env, args).job_name, stack_state(env)
    running = running_jobs(env).get(name)
    if running:
        raise Refused(f"REFUSED: {name} is running as {running}; stop it first (make flink-savepoint).")
    print("=" * 78 + f"\nWARNING: starting {name} with EMPTY state. Its checkpoints and savepoints are no longer\n"
          "resumed; the upload topic is read again from its earliest offset, and rows are rewritten as a\n"
          "clean run decides them. Records Kafka no longer retains are not counted again.\n" + "=" * 78, flush=True)
    state.registry.reset()
    state.note.unlink(missing_ok=True)
    return run("pipeline", ["--startup_mode=earliest-offset", "--recheck_written=1", *args], env)


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
    if command in ("up", "reset", "redeploy", "resume"):  # the stack's own pipeline
        options = stack_args(options, env)
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
    elif command == "up":
        up(options, env)
    elif command == "down":
        location = down(env)
        print(f"pipeline stopped; savepoint {location}" if location else "pipeline not running")
    elif command == "reset":
        reset(options, env)
    elif command == "status":
        for name, job_id in sorted(running_jobs(env).items()):
            print(f"{job_id}  {name}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
