"""Ledger open time: `Ledger.open` on a file of N call transactions (4 postings each), without
a balance checkpoint (the projection is summed from every posting) and with the checkpoint
`close` writes (only the tail after it is read), in the same run.

    /work/venv/bin/python bench/ledger_open.py [--calls 250000]

The file is generated with raw `executemany` of rows that respect the hash chain (the same
rows the writer would write, bench/ledger.py's baseline), 20,000 transactions at a time so
memory stays flat, which is much faster than the writer; `verify` is not run. 2,500,000 calls
= 10,000,000 postings (SPEC's "must not take minutes" case: ~2.3 GB, ~4 minutes to generate);
the no-checkpoint figure grows linearly with the postings, the checkpoint figure with the
tail only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.store import Ledger

# bench/ledger.py shares its name with the package, so it is loaded by path.
_here = Path(__file__).with_name("ledger.py")
_spec = importlib.util.spec_from_file_location("bench_ledger", _here)
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)

GROUP = 20_000  # transactions generated and inserted at a time


async def open_seconds(path: str) -> tuple[float, int]:
    """Seconds for one `Ledger.open` (then close); the balance projection's seq."""
    started = time.perf_counter()
    ledger = await Ledger.open(path)
    elapsed = time.perf_counter() - started
    seq = ledger.balances.seq
    await ledger.close()
    return elapsed, seq


def main() -> None:
    """Generate the file, time the opens, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=250_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = str(Path(tmp, "open.db"))
        started = time.perf_counter()
        conn = _bench.open_raw(path)
        prev = bytes(32)
        for lo in range(0, args.calls, GROUP):
            calls = _bench.make_calls(min(GROUP, args.calls - lo), start=lo)
            rows, prev = _bench.chain_rows(calls, lo, prev)
            _bench.insert_rows(conn, rows)
        conn.close()
        built = time.perf_counter() - started
        cold, seq = asyncio.run(open_seconds(path))  # no checkpoint yet; close writes one
        warm, seq2 = asyncio.run(open_seconds(path))
        size = os.path.getsize(path)
    postings = args.calls * 4
    print(f"file: {args.calls:,} call tx, {postings:,} postings, {size / 1e6:,.0f} MB, "
          f"generated in {built:.1f} s")
    print("| open | postings | seconds | projected for 10M postings |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| no checkpoint (sum of every posting) | {postings:,} | {cold:.2f} "
          f"| {cold * 10_000_000 / postings:.1f} s |")
    print(f"| checkpoint at head (written by close) | {postings:,} | {warm:.3f} | about the same |")
    assert seq == seq2 == args.calls


if __name__ == "__main__":
    main()
