"""bench/percentiles: nearest-rank quantiles, the one definition the bench scripts print."""

import math

import pytest

from bench.percentiles import describe, percentile


def test_nearest_rank_picks_a_measured_value() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.2) == 1.0  # ceil(0.2 * 5) = 1st smallest
    assert percentile(values, 0.21) == 2.0
    assert percentile(values, 0.99) == 5.0 and percentile(values, 1.0) == 5.0


def test_the_tail_of_a_hundred_samples() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.95) == 95 and percentile(values, 0.99) == 99


def test_no_values_and_bad_quantiles() -> None:
    assert math.isnan(percentile([], 0.5))
    assert describe([]) == "no values"
    for q in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            percentile([1.0], q)


def test_describe_formats_each_quantile_and_the_count() -> None:
    assert describe([0.5, 1.5, 2.5, 3.5], unit="s") == "p50 1.50s  p95 3.50s  p99 3.50s  (n=4)"
    assert describe([10.0, 20.0], (0.5,), unit=" ms", digits=1) == "p50 10.0 ms  (n=2)"
