"""``imgstream batch ...``: run a job on the local stack, or build/send its EMR Serverless request.

Registered through the CLI's ``imgstream.commands`` entry-point group (``setup.cfg``), so the
library's CLI never imports this deployable::

    imgstream batch derivatives [--backfill]
    imgstream batch gc [--dry-run | --apply] [--grace 3d]
    imgstream batch reconcile [--grace 10m]
    imgstream batch reorganize [--to v2] [--grace 3d] [--limit N]
    imgstream batch submit JOB --emr --application-id ID --role-arn ARN --artifacts S3URI
                           --log-uri S3URI [--region R] [--dry-run] [--job-args='OPTIONS']

Local runs go through ``spark-submit --master local[2]`` (batch/submit.py); the job's JSON
summary is the last stdout line and its exit status is the command's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from batch import submit
from batch.main import JOBS, add_job_arguments


def _state_dir() -> Path:
    return Path(os.environ.get("IMGSTREAM_STATE_DIR", str(submit.REPO / ".stack")))


def _run_local(args: argparse.Namespace) -> int:
    from imgstream.config import load_env_file

    state = _state_dir()
    env_file = state / "env"
    if not env_file.exists():
        print(f"imgstream batch: no {env_file}: is the local stack up (`make up`)?", file=sys.stderr)
        return 2
    job_args = [args.job, *args.job_argv]
    venv = Path(sys.prefix)
    return submit.run_local(job_args, stack_env=load_env_file(env_file), venv=venv, lib=state / "lib",
                            master=args.master)


def _submit(args: argparse.Namespace) -> int:
    from batch.main import parse

    job_argv = shlex.split(args.job_args)
    parse([args.submit_job, *job_argv])  # the job's own options, checked before anything is sent
    env = {k: v for k, v in os.environ.items() if k.startswith("IMGSTREAM_")}
    target = submit.EmrTarget(application_id=args.application_id, role_arn=args.role_arn,
                              artifacts_uri=args.artifacts, log_uri=args.log_uri, env=env)
    request = submit.emr_request([args.submit_job, *job_argv], target)
    submit.validate("StartJobRun", request)
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    answer = submit.send(request, region=args.region)
    print(json.dumps({k: answer.get(k) for k in ("applicationId", "jobRunId", "arn")}))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``batch`` actions to ``parser``."""
    parser.add_argument("--master", default="local[2]", help="Spark master of local runs (default local[2])")
    sub = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    add_job_arguments(sub)
    for job in JOBS:
        sub.choices[job].set_defaults(handler=_run_local_from_namespace)
    s = sub.add_parser("submit", help="build (and send) the EMR Serverless StartJobRun request of a job")
    s.add_argument("submit_job", choices=JOBS, metavar="JOB")
    s.add_argument("--emr", action="store_true", required=True, help="target EMR Serverless (the only target)")
    s.add_argument("--application-id", required=True)
    s.add_argument("--role-arn", required=True)
    s.add_argument("--artifacts", default="s3://imgstream-artifacts/batch",
                   help="S3 prefix with main.py, imgstream-code.zip, imgstream-venv.tar.gz, jars/")
    s.add_argument("--log-uri", default="s3://imgstream-artifacts/logs/", help="S3 URI for Spark logs")
    s.add_argument("--region", default=None)
    s.add_argument("--dry-run", action="store_true", help="print the request instead of sending it")
    s.add_argument("--job-args", default="", metavar="'OPTIONS'",
                   help="the job's own options as one string, e.g. --job-args='--apply --grace 3d'")
    s.set_defaults(handler=_submit)


def _run_local_from_namespace(args: argparse.Namespace) -> int:
    """Rebuild the job's argv from the parsed namespace (the job re-parses it under spark-submit)."""
    argv: list[str] = []
    if args.job == "derivatives" and args.backfill:
        argv.append("--backfill")
    if args.job == "gc":
        argv.append("--apply" if args.apply else "--dry-run")
    if args.job in ("gc", "reconcile", "reorganize"):
        argv += ["--grace", f"{args.grace.total_seconds():g}s"]
    if args.job == "reconcile" and args.skip_postgres:
        argv.append("--skip-postgres")
    if args.job == "reorganize":
        argv += ["--to", args.layout, "--limit", str(args.limit)]
    args.job_argv = argv
    return _run_local(args)


def register(subparsers: Any) -> None:
    """Entry point of the ``imgstream.commands`` group: adds ``imgstream batch``."""
    parser = subparsers.add_parser("batch", help="Spark batch jobs: derivatives, reconcile, gc, reorganize, submit",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m batch.cli JOB ...`` (what ``make batch`` runs): the same as ``imgstream batch``."""
    parser = argparse.ArgumentParser(prog="imgstream batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
