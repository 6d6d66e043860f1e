"""The ``spark-submit`` entry point of every batch job: ``main.py JOB [options]``.

Reads the configuration once (environment -> :class:`batch.config.BatchConfig`), starts the
Spark session, runs the job's ``build`` under a progress reporter and prints the JSON summary
as the last stdout line. Exit status: 0, or 1 when the job found something wrong (reconcile's
disagreements) or could not run at all (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batch import runtime  # noqa: E402
from batch.config import DEFAULT_GRACE, BatchConfig, parse_duration  # noqa: E402

JOBS = ("derivatives", "reconcile", "gc", "reorganize")


def add_job_arguments(sub: Any) -> None:
    """Each job's sub-parser (shared by this entry point and ``imgstream batch``)."""
    d = sub.add_parser("derivatives", help="render the missing derivatives of accepted images")
    d.add_argument("--backfill", action="store_true",
                   help="compute the missing set over every image row instead of new uploads")
    r = sub.add_parser("reconcile", help="S3 vs upload events vs Cassandra vs PostgreSQL; exit 1 on disagreement")
    r.add_argument("--grace", type=parse_duration, default=parse_duration("10m"),
                   help="ignore what is younger than this (in flight); default 10m")
    r.add_argument("--skip-postgres", action="store_true",
                   help="leave PostgreSQL out (a keyspace that is not replicated, e.g. in tests)")
    r.add_argument("--producer-prefix", default=None, metavar="PREFIX",
                   help="judge only images of producers whose name starts with PREFIX (orphan objects not judged)")
    g = sub.add_parser("gc", help="collect unreferenced objects: dry run (default) or quarantine + delete")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only write the manifest (default)")
    mode.add_argument("--apply", dest="apply", action="store_true",
                      help="quarantine candidates; delete quarantined objects still unreferenced")
    g.set_defaults(apply=False)  # dry run unless --apply is given, whatever the order of the flags
    g.add_argument("--grace", type=parse_duration, default=DEFAULT_GRACE,
                   help="minimum age of a candidate (and of a quarantine before deletion); default 3d")
    o = sub.add_parser("reorganize", help="move originals to another key layout (copy, verify, switch, retire)")
    o.add_argument("--to", dest="layout", default="v2", help="target layout name (imgstream.domain.storage_layout)")
    o.add_argument("--grace", type=parse_duration, default=DEFAULT_GRACE,
                   help="how long an old key stays after the switch before it is retired; default 3d")
    o.add_argument("--limit", type=int, default=0, help="move at most this many contents this run (0 = all)")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch", description="imgstream batch jobs (Spark)")
    parser.add_argument("--master", default=None, help="Spark master (default: from spark-submit)")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    add_job_arguments(sub)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, config: BatchConfig) -> tuple[dict[str, Any], int]:
    """Run one job; returns (summary, exit status)."""
    spark = runtime.spark_session(args.job, args.master)
    try:
        with runtime.Progress(args.job, spark, config.progress_interval_s) as progress:
            if args.job == "derivatives":
                from batch import derivatives

                return derivatives.build(spark, config, backfill=args.backfill, progress=progress), 0
            if args.job == "reconcile":
                from batch import reconcile

                summary = reconcile.build(spark, config, grace=args.grace, postgres=not args.skip_postgres,
                                          producer_prefix=args.producer_prefix, progress=progress)
                return summary, 0 if summary["agree"] else 1
            if args.job == "gc":
                from batch import gc

                return gc.build(spark, config, apply=args.apply, grace=args.grace, progress=progress), 0
            from batch import reorganize

            return reorganize.build(spark, config, layout=args.layout, grace=args.grace, limit=args.limit,
                                    progress=progress), 0
    finally:
        spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    config = BatchConfig.from_env()
    summary, status = run(args, config)
    runtime.emit_summary(summary)
    return status


if __name__ == "__main__":
    sys.exit(main())
