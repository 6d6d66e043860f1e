"""Configuration of the batch jobs: built once by the entry point, passed to every job.

Frozen and picklable: executors receive it inside the task closures, so they never read the
environment themselves (on EMR Serverless only the driver gets ``spark.emr-serverless.driverEnv.*``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Mapping

from imgstream.config import StackConfig
from imgstream.domain.derivatives import DEFAULT_LADDER, Ladder
from imgstream.domain.events import TOPIC_UPLOADED

#: Default grace before an unreferenced object counts as an orphan (and before a quarantined one
#: is deleted, and a reorganized key retired): longer than any upload can take from the S3 put to
#: its row in Cassandra, including a Flink restart from its last checkpoint and a weekend of
#: nobody looking at alerts.
DEFAULT_GRACE: Final = timedelta(days=3)
#: Seconds between progress lines (the interface promises at most 10).
PROGRESS_INTERVAL_S: Final = 5.0

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> timedelta:
    """``"0s"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"3d"``, ``"1w"`` (bare numbers are seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 0s, 15m, 12h, 3d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class BatchConfig:
    """Where the stack is, the preset ladder, and where jobs keep their reports."""

    stack: StackConfig
    ladder: Ladder = DEFAULT_LADDER
    topic: str = TOPIC_UPLOADED
    #: Object-store prefix for job reports (GC manifests); GC never touches it.
    reports_prefix: str = "reports/"
    progress_interval_s: float = PROGRESS_INTERVAL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BatchConfig":
        env = os.environ if env is None else env
        ladder = env.get("IMGSTREAM_BATCH_LADDER")
        return cls(
            stack=StackConfig.from_env(env),
            ladder=Ladder.from_json(ladder) if ladder else DEFAULT_LADDER,
            topic=env.get("IMGSTREAM_BATCH_TOPIC", TOPIC_UPLOADED),
            reports_prefix=env.get("IMGSTREAM_BATCH_REPORTS_PREFIX", "reports/"),
        )
