"""Near-dedup index layouts side by side: deciding cost per image as the index grows.

The same generated stream (``flink_jobs.generator.plan``: originals, exact and near copies;
replays left out, as they never reach the index) goes through the reference :class:`~imgstream.domain.dedup.Deduplicator` twice per index
size, in alternating order, over plain dicts (no Flink):

* **probed**: the default layout (``near_bands`` unset: 4 bands of 16 bits at distance 6,
  each image looking up 68 keys), multi-index hashing;
* **narrow**: ``d + 1`` bands (7 bands of 9-10 bits at distance 6) and no probing, the layout
  before it, whose per-key lists grow with ``N / 1,024``.

Prints microseconds per image for each, the ratio narrow / probed, the longest band list of
each, and how many verdicts differ. None should: both find every earlier image within the
distance, until the narrow layout's lists reach their cap (512 candidates, ~500,000 images)
and it starts to miss near duplicates. Pure CPU, single process; the numbers vary with the
machine's load, so compare the ratio, which is measured in one run.

Usage: ``.venv/bin/python bench/dedup_index.py [--sizes 10000,50000] [--rounds 2]`` (the docs'
table used ``--sizes 10000,50000,100000``)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quiet  # noqa: E402
from flink_jobs.generator import image_ref, in_decision_order, plan  # noqa: E402
from imgstream.domain.dedup import DEFAULT_NEAR_MAX_DISTANCE, DedupPolicy, Deduplicator, ImageRef, Verdict  # noqa: E402

LAYOUTS = {"probed": None, "narrow": DEFAULT_NEAR_MAX_DISTANCE + 1}


def stream(n: int) -> list[ImageRef]:
    """About ``n`` valid images in decision order, with the generator's mix of copies."""
    planned = plan(seed=1, originals=int(n * 0.7), exact_copies=n // 10, near_copies=n // 10,
                   replays=n // 20, malformed=n // 20, step_ms=10, start_ms=0)  # fmt: skip
    # replays are dropped before any index lookup: leaving them out measures the lookups
    return [image_ref(c) for c in in_decision_order(p for p in planned if p.kind != "replay")[0]]


def run(refs: Sequence[ImageRef], bands: int | None) -> tuple[float, list[Verdict | None], Deduplicator]:
    dedup = Deduplicator(DedupPolicy(near_bands=bands))
    start = time.perf_counter()
    verdicts = [dedup.process(r) for r in refs]
    return time.perf_counter() - start, verdicts, dedup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000", help="index sizes (images), comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each layout per size (best is kept)")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    quiet.wait_as_told(args)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error(f"--sizes must be whole numbers, got {args.sizes!r}")
    if not sizes or min(sizes) < 100 or args.rounds < 1:
        parser.error("sizes must be >= 100 and rounds >= 1")
    print(f"{'images':>8} {'probed us/img':>14} {'narrow us/img':>14} {'narrow/probed':>14} "
          f"{'longest list p/n':>17} {'verdicts differ':>16}")  # fmt: skip
    for n in sizes:
        refs = stream(n)
        best: dict[str, float] = {}
        results: dict[str, tuple[list[Verdict | None], Deduplicator]] = {}
        for round_ in range(args.rounds):
            order = list(LAYOUTS.items()) if round_ % 2 == 0 else list(reversed(LAYOUTS.items()))
            for name, bands in order:
                seconds, verdicts, dedup = run(refs, bands)
                best[name] = min(best.get(name, seconds), seconds)
                results[name] = (verdicts, dedup)
        differ = sum(a != b for a, b in zip(results["probed"][0], results["narrow"][0]))
        longest = {name: max(map(len, d.bands.values())) for name, (_, d) in results.items()}
        per = {name: best[name] / len(refs) * 1e6 for name in LAYOUTS}
        print(f"{len(refs):>8} {per['probed']:>14.0f} {per['narrow']:>14.0f} {per['narrow'] / per['probed']:>14.1f} "
              f"{longest['probed']:>8}/{longest['narrow']:<8} {differ:>16}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
