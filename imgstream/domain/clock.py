"""Clock skew: event time is the gateway's ``received_at``, bounded by the Kafka append time.

Event time comes from the gateway's clock, which can be wrong. A clock hours ahead would pull
the watermark (the largest event time seen, less the out-of-orderness bound) hours ahead for
*every* producer: all honest uploads after it would be too late and missing from the
statistics. Time behind only hurts the skewed gateway's own uploads (they arrive late), so
only time *ahead* is bounded.

The bound is the broker's clock: the upload topic stamps each record with its append time
(``message.timestamp.type=LogAppendTime``), which a replay meets unchanged, so a clamped
event time is the same on every run. An honest ``received_at`` is *before* its append time
(the gateway stamps it, stores the bytes, then publishes), so the tolerance only absorbs
small differences between clocks.

Pure: the pipeline applies the same rule in its SQL source (for the watermark) and in its
cleaning step (for the event time the windows use).
"""

from __future__ import annotations

from dataclasses import dataclass

#: How far ``received_at`` may be ahead of the Kafka append time before it is not trusted.
#: Clocks kept by NTP differ by milliseconds; 5 s equals the pipeline's out-of-orderness
#: bound, so a clock within it moves the watermark no further than ordinary disorder does.
CLOCK_SKEW_TOLERANCE_MS = 5_000


@dataclass(frozen=True, slots=True)
class Clamped:
    """An event time after the skew check: ``skew_ms`` > 0 when it was clamped (by how much
    the claimed time was ahead of the append time)."""

    event_time: int
    skew_ms: int = 0

    @property
    def clamped(self) -> bool:
        return self.skew_ms > 0


def clamp_event_time(claimed_ms: int, appended_ms: int | None, tolerance_ms: int = CLOCK_SKEW_TOLERANCE_MS) -> Clamped:
    """``claimed_ms`` unless it is more than ``tolerance_ms`` ahead of ``appended_ms`` (the
    Kafka append time), in which case the append time: a clock that far ahead is not trusted.
    Without an append time (``None``) nothing is clamped."""
    if tolerance_ms < 0:
        raise ValueError("tolerance_ms must be >= 0")
    if appended_ms is None or claimed_ms - appended_ms <= tolerance_ms:
        return Clamped(claimed_ms)
    return Clamped(appended_ms, claimed_ms - appended_ms)
