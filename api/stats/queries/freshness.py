"""How far behind real time each replicated table is (``GET /v1/freshness``, and every answer).

PostgreSQL receives the pipeline's Cassandra tables by change data capture; each replicated row
carries the time its last change was written to Cassandra. ``analytics.freshness``
(connectors/postgres/40-freshness.sql) gives, per replicated table, the newest change applied and when
PostgreSQL applied it; for ``upload_stats`` the answer adds how far event time is final.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Mapping

from api.stats.sql import FINAL_UNTIL, V_FRESHNESS, Sql
from api.stats.times import as_utc, format_time

#: Which replicated tables each answer depends on (its ``freshness`` lists those).
FRESHNESS_TABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "uploads": ("upload_stats",),
    "summary": ("upload_stats",),
    "top": ("upload_stats",),
    "usage": ("upload_stats", "images"),
    "duplicates": ("duplicates",),
    "image": ("images", "derivatives"),
}


def freshness_sql() -> Sql:
    """Per replicated table: the newest change applied (``analytics.freshness``), and for
    upload_stats how far event time is final (:data:`~api.stats.sql.FINAL_UNTIL`)."""
    text = (f"SELECT table_name, newest_change_at, newest_applied_at,\n"
            f"       CASE WHEN table_name = 'upload_stats' THEN {FINAL_UNTIL} END AS final_until\n"
            f"FROM {V_FRESHNESS}\nORDER BY table_name")
    return Sql("freshness", text, ())


def freshness_entry(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One table's freshness as JSON. ``lag_seconds`` = now - newest change applied: under steady
    traffic the replication delay; for an idle table, the time since its last change."""
    change = row["newest_change_at"]
    applied = row["newest_applied_at"]
    final_until = row["final_until"]
    entry: dict[str, Any] = {
        "table": row["table_name"],
        "newest_change_at": format_time(change) if change else None,
        "newest_applied_at": format_time(applied) if applied else None,
        "lag_seconds": round(max(0.0, (now - as_utc(change)).total_seconds()), 3) if change else None,
    }
    if row["table_name"] == "upload_stats":
        entry["final_until"] = format_time(final_until) if final_until else None
    return entry
