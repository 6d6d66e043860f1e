"""Lines ``make status`` prints under the component table: what is not a component's health but
must not stay silent - records in the dead-letter topics (the pipeline's and the CDC sink's).

Each note is best effort: a note that cannot be computed (Kafka down) says so and never fails
the status command (the component table already reports the outage).
"""

from __future__ import annotations

import asyncio

from component import Context

#: The dead-letter topics: who writes them, where their records are explained.
DEAD_LETTER_TOPICS = {
    "images.dlq": ("pipeline: malformed upload events", "docs/flink-jobs.md"),
    "cdc.dlq": ("CDC sink: changes PostgreSQL did not apply", "docs/cdc.md"),
}
#: A note waits this long at most (a down Kafka must not hang `make status`).
NOTE_TIMEOUT_S = 10


async def _dead_letters(ctx: Context) -> list[str]:
    from imgstream.adapters.kafka import retained_records

    lines = []
    for topic, (what, doc) in DEAD_LETTER_TOPICS.items():
        try:
            count = await asyncio.wait_for(retained_records(ctx.config.kafka, topic), NOTE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a note is best effort; the table shows the outage
            lines.append(f"dead letters  {topic:<11} unknown ({type(exc).__name__})")
            continue
        shown = "no topic yet" if count is None else f"{count} record(s)"
        warn = f"  <- not empty: see {doc}" if count else ""
        lines.append(f"dead letters  {topic:<11} {shown:<14} ({what}){warn}")
    return lines


def lines(ctx: Context) -> list[str]:
    """The notes, one string per line."""
    return asyncio.run(_dead_letters(ctx))
