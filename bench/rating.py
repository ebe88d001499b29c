"""Rating benchmark (SPEC §10): 100,000-prefix deck load time and RSS, rated legs/s.

Each figure is printed beside a naive baseline measured in the same run: the deck loaded into
a plain dict (code -> rows, Decimal cells) and a lookup that tries every prefix of the number
longest first, then prices the leg with the Decimal formula.

Usage: `python bench/rating.py [--calls N]`. Workloads (3 legs per call: customer, client,
reseller, three 100,000-prefix plans):
  uniform  every number new, destinations uniform over the deck, random durations (worst case)
  traffic  destinations Zipf-distributed (s=1.1), 45 % unanswered, durations ~ exp(mean 90 s),
           numbers drawn from a pool of 50,000 subscribers (repeat callers, like real traffic)
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import resource
import subprocess
import sys
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

# This file is bench/rating.py: its own folder must not shadow the `rating` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gen_deck import make_deck  # noqa: E402
from rating.deck import parse_deck  # noqa: E402
from rating.index import PrefixIndex  # noqa: E402
from rating.model import RatePlan, Scope  # noqa: E402
from rating.rater import ClientTariff, Rater, TrunkTariff  # noqa: E402
from rating.units import parse_time  # noqa: E402

START = parse_time("2026-11-22T10:00:00Z")


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- the naive baseline ---------------------------------------------------------------------

Row = tuple[int, int | None, Decimal, Decimal, int, int]


def naive_load(text: str) -> dict[str, list[Row]]:
    """Plain dict code -> rows, cells converted with Decimal/parse_time, no validation."""
    deck: dict[str, list[Row]] = {}
    reader = csv.reader(text.splitlines())
    next(reader)
    for code, _desc, since, until, rate, fee, conn, block in reader:
        row = (
            parse_time(since),
            parse_time(until) if until else None,
            Decimal(rate),
            Decimal(fee or 0),
            int(conn or 0),
            int(block or 1),
        )
        deck.setdefault(code, []).append(row)
    return deck


_SIXTY = Decimal(60)
_ONE = Decimal(1)


def naive_leg(deck: dict[str, list[Row]], digits: str, at: int, billsec: int) -> int | None:
    """Longest prefix first, latest valid row, Decimal amount; None when unrated."""
    for length in range(len(digits), -1, -1):
        rows = deck.get(digits[:length])
        if rows is None:
            continue
        best = None
        for row in rows:
            if (
                row[0] <= at
                and (row[1] is None or at < row[1])
                and (best is None or row[0] > best[0])
            ):
                best = row
        if best is None:
            continue
        if billsec <= 0:
            return 0
        _, _, rate, fee, conn, block = best
        charged = max(conn, billsec)
        if block and charged > conn:
            charged = conn - (-(charged - conn) // block) * block
        amount = fee + rate * charged / _SIXTY
        return int((amount * 1_000_000).quantize(_ONE, rounding=ROUND_HALF_UP))
    return None


# --- workloads -----------------------------------------------------------------------------


def workload(
    codes: list[str], calls: int, kind: str, seed: int = 7, draw: int = 0
) -> list[tuple[str, int]]:
    """(number, billsec) pairs for `calls` calls.

    `seed` fixes the deck sample and, for traffic, the subscriber pool; `draw` picks which
    calls are placed from that pool, so draws 1, 2, … are new calls of the same subscribers
    (a daemon's steady state), not a replay of draw 0.
    """
    rng = random.Random(seed)

    def number(code: str) -> str:
        return code + "".join(rng.choice("0123456789") for _ in range(max(0, 12 - len(code))))

    if kind == "uniform":
        rng.seed(f"{seed}:{draw}")
        return [(number(rng.choice(codes)), rng.randint(0, 600)) for _ in range(calls)]
    ranked = codes[:]
    rng.shuffle(ranked)
    weights = [1 / (i + 1) ** 1.1 for i in range(len(ranked))]
    pool = [number(c) for c in rng.choices(ranked, weights, k=50_000)]
    rng.seed(f"{seed}:{draw}")
    out = []
    for _ in range(calls):
        billsec = 0 if rng.random() < 0.45 else min(3600, 1 + int(rng.expovariate(1 / 90)))
        out.append((rng.choice(pool), billsec))
    return out


def measure_rss(which: str) -> None:
    """Child process: print the RSS growth of loading the deck one way or the other."""
    text = make_deck()
    gc.collect()
    before = rss_mb()
    if which == "ours":
        plan = RatePlan("p", Scope.CUSTOMER, "USD", parse_deck(text, "bench.csv"))
        keep: object = PrefixIndex.build(plan)
    else:
        keep = naive_load(text)
    del text
    gc.collect()
    print(
        f"{rss_mb() - before:.1f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}"
    )
    del keep


def child_rss(which: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss", which], capture_output=True, text=True, check=True
    )
    grown, peak = out.stdout.split()
    return float(grown), float(peak)


def main() -> None:
    """Run every measurement and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rss", choices=("ours", "baseline"))
    args = parser.parse_args()
    if args.rss:
        measure_rss(args.rss)
        return

    text = make_deck()
    print(f"deck: {len(text.splitlines()) - 1} rows, 100,000 prefixes; {args.calls} calls/workload")

    t0 = time.perf_counter()
    dests = parse_deck(text, "bench.csv")
    t1 = time.perf_counter()
    index = PrefixIndex.build(RatePlan("c", Scope.CUSTOMER, "USD", dests))
    t2 = time.perf_counter()
    naive = naive_load(text)
    t3 = time.perf_counter()
    print(
        f"load  ours: parse {t1 - t0:.2f} s + index {t2 - t1:.2f} s = {t2 - t0:.2f} s"
        f"   baseline dict: {t3 - t2:.2f} s   (target < 2 s)"
    )
    ours_rss, ours_peak = child_rss("ours")
    base_rss, base_peak = child_rss("baseline")
    print(
        f"rss   ours: +{ours_rss:.0f} MB (peak {ours_peak:.0f} MB)"
        f"   baseline dict: +{base_rss:.0f} MB (peak {base_peak:.0f} MB)"
    )

    plans = {
        "c": RatePlan("c", Scope.CUSTOMER, "USD", dests),
        "v": RatePlan("v", Scope.VMGATECLIENT, "USD", dests),
        "r": RatePlan("r", Scope.RESELLER, "USD", dests),
    }
    del index
    codes = [d.code for d in dests if d.code]
    for kind in ("uniform", "traffic"):
        draws = [workload(codes, args.calls, kind, draw=d) for d in range(4)]
        calls = draws[0]
        # A fresh Rater per workload: its first pass (draw 0) starts with empty memos (cold);
        # the rounds after it rate new draws (other calls, same subscribers: every uniform
        # number is new again), the steady state of a daemon that has seen such traffic.
        rater = Rater(
            plans,
            {"t": TrunkTariff("t", "acme", "c", "")},
            {"g": ClientTariff("g", "v", "ra", "r")},
        )
        rate = rater.rate
        rounds = []
        for draw in draws:
            t = time.perf_counter()
            for num, billsec in draw:
                rate(num, "t", "g", START, billsec)
            rounds.append(3 * len(draw) / (time.perf_counter() - t))
        best = max(rounds[1:])
        idx = rater.index("c")
        match = idx.match
        t = time.perf_counter()
        for num, _ in calls:
            match(num, START)
        lookups = len(calls) / (time.perf_counter() - t)
        t = time.perf_counter()
        for num, billsec in calls:
            naive_leg(naive, num, START, billsec)
            naive_leg(naive, num, START, billsec)
            naive_leg(naive, num, START, billsec)
        base = 3 * len(calls) / (time.perf_counter() - t)
        print(
            f"rate  {kind:8s} ours: {best:,.0f} legs/s (Rater.rate, 3 legs/call, "
            f"best of 3 new draws; "
            f"cold first pass {rounds[0]:,.0f}; "
            f"lookups alone {lookups:,.0f}/s)   baseline: {base:,.0f} legs/s"
            f"   (target 1,000,000)"
        )


if __name__ == "__main__":
    main()
