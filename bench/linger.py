"""Forgetting lingering dialogs at steady state: `Tracker.expire`'s cost per second of traffic.

    /work/venv/bin/python bench/linger.py [--calls-per-s 5000] [--seconds 40]

After its record is out a dialog lingers 32 s (RFC 3261 Timer B/F) to absorb late copies, so
at 5,000 calls/s (60,000 HEP packets/s) ~160,000 dialogs linger and each once-a-second
`expire` forgets the 5,000 that ended 32 s ago. This fills a real `Tracker`'s lingering
table to that steady state (directly: the 160,000 calls are not fed through `feed`, only
their lingering entries and dialogs are what `expire` touches) and times `expire` for
--seconds simulated seconds. Baseline in the same run: inserting and deleting the same keys
in a plain dict (what forgetting them costs at the least).

Before 2026-11-24 `expire` deleted one key at a time behind `next(iter(dict))`, which
rescans every slot deleted since the dict last compacted: quadratic, 47 ms per second in the
daemon at 60,000 packets/s (bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip.dialog import Tracker


def main() -> None:
    """Time `expire` at the lingering steady state beside a plain dict's insert and delete."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls-per-s", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=40)
    args = ap.parse_args()
    rate, seconds = args.calls_per_s, args.seconds
    t = Tracker()
    step = 1_000_000 // rate  # µs between two calls' ends
    standing = t.linger_us // step
    keys = [(f"call-{i}", "tag") for i in range(standing + rate * seconds)]
    # The keys only: `expire` finds no dialog to drop, which is the cheap branch; the loop
    # over lingering entries is what this measures.
    for i in range(standing):
        t._linger[keys[i]] = i * step
    n = standing
    spent = 0.0
    for _ in range(seconds):
        for _ in range(rate):
            t._linger[keys[n]] = n * step
            n += 1
        start = time.perf_counter()
        t.expire(n * step)
        spent += time.perf_counter() - start
    assert standing - 1 <= len(t._linger) <= standing, len(t._linger)  # a steady state

    plain: dict[tuple[str, str], int] = {}
    for i in range(standing):
        plain[keys[i]] = i
    base = 0.0
    n, old = standing, 0
    for _ in range(seconds):
        for _ in range(rate):
            plain[keys[n]] = n
            n += 1
        start = time.perf_counter()
        for _ in range(rate):
            del plain[keys[old]]
            old += 1
        base += time.perf_counter() - start
    print(f"{standing:,} lingering, {rate:,} ending per second: expire {spent / seconds * 1e3:.2f}"
          f" ms per second of traffic; plain dict deletes {base / seconds * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
