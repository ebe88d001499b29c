"""Cycle-collector pause with large rate decks loaded, before and after `freeze_long_lived`.

    /work/venv/bin/python bench/gc_pause.py [--plans 3] [--prefixes 100000]

Loads `--plans` distinct generated decks (bench/gen_deck.py) into a `Rater`, as a tenant with
that many 100,000-prefix plans would hold them, and times a full `gc.collect()` (the pause a
generation-2 collection puts on the event loop) three ways in the same process:
baseline (interpreter and modules only, before any deck), with the decks loaded, and after
`vmgated.heap.freeze_long_lived()`. Best of 3 each.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gen_deck import make_deck  # noqa: E402
from rating.deck import parse_deck  # noqa: E402
from rating.model import RatePlan, Scope  # noqa: E402
from rating.rater import Rater  # noqa: E402
from vmgated.heap import freeze_long_lived  # noqa: E402


def full_collection_ms() -> float:
    """Best of 3 full collections, in milliseconds."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    """Print the three pauses and the tracked object counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=3)
    ap.add_argument("--prefixes", type=int, default=100_000)
    args = ap.parse_args()

    base_objects, base_ms = len(gc.get_objects()), full_collection_ms()
    plans = {}
    for n in range(args.plans):
        rows = parse_deck(make_deck(args.prefixes, seed=20261122 + n), f"deck{n}.csv")
        plans[f"p{n}"] = RatePlan(f"p{n}", Scope.CUSTOMER, "USD", rows)
    rater = Rater(plans, {}, {})
    loaded_objects, loaded_ms = len(gc.get_objects()), full_collection_ms()
    frozen = freeze_long_lived()
    frozen_objects, frozen_ms = len(gc.get_objects()), full_collection_ms()
    print(f"{args.plans} plans x {args.prefixes:,} prefixes ({len(rater.plan_names)} indexes)")
    print("| heap | objects the collector walks | full collection ms |")
    print("| --- | ---: | ---: |")
    print(f"| baseline: before any deck | {base_objects:,} | {base_ms:.1f} |")
    print(f"| decks loaded | {loaded_objects:,} | {loaded_ms:.1f} |")
    print(f"| after freeze_long_lived ({frozen:,} frozen) | {frozen_objects:,} | {frozen_ms:.1f} |")


if __name__ == "__main__":
    main()
