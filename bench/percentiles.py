"""Percentiles of measured samples: one definition for every bench script.

Nearest rank: the ``q`` quantile of ``n`` samples is the ``ceil(q * n)``-th smallest, so every
figure printed is a value that was measured (no interpolation between two runs' samples).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (``0 < q <= 1``) of ``values``; NaN when there are none."""
    return _ranked(sorted(values), q)


def _ranked(ordered: Sequence[float], q: float) -> float:
    if not 0 < q <= 1:
        raise ValueError(f"quantile {q} is not in (0, 1]")
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def describe(values: Iterable[float], quantiles: Sequence[float] = (0.5, 0.95, 0.99), *,
             unit: str = "s", digits: int = 2) -> str:
    """``"p50 1.20s  p95 3.40s  p99 4.00s  (n=300)"``, or ``"no values"``."""
    ordered = sorted(values)
    if not ordered:
        return "no values"
    parts = [f"p{round(q * 100):d} {_ranked(ordered, q):.{digits}f}{unit}" for q in quantiles]
    return "  ".join(parts) + f"  (n={len(ordered)})"
