"""Ledger throughput: durable transactions/s and postings/s through the writer, beside raw
`sqlite3.executemany` of the same rows into the same schema, in the same run.

    /work/venv/bin/python bench/ledger.py [--calls 100000] [--payments 50000]
                                          [--window 2000] [--cpython-gc]

Writer: `call_tx` + `submit_nowait` per call, as vmgated's pipeline does, as fast as the
writer acknowledges them (at most WINDOW in flight; yielding to the loop every YIELD_EVERY),
under the daemon's collector thresholds with the pre-built inputs frozen; the clock stops at
the last acknowledgement, so every counted transaction is durable (WAL, synchronous=FULL).
`--window 0 --cpython-gc` is the method of the figures before 2026-11-24 (bench/README.md).
Baseline: the rows the writer would write (pre-encoded, pre-hashed) inserted with one
executemany per table and one COMMIT per 2,000 transactions — the floor SQLite itself sets.
Commit latency is the writer's own per-group time (planning + the write process's answer: BEGIN →
COMMIT there, since 2026-11-24 in a process of its own), p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import transactions as tx
from ledger.codec import chain_hash, encode
from ledger.errors import LedgerFull
from ledger.model import CallEntry, Receipt, Transaction
from ledger.sink import INSERT_CALL, INSERT_PAYMENT
from ledger.store import Ledger, configure, migrate
from rating.model import Leg, Party
from vmgated.heap import tune_collector

T0 = 1_795_000_000_000_000
YIELD_EVERY = 256
FREEZE_INPUTS = True
WINDOW = 2_000  # transactions submitted and not yet acknowledged, at most (0: no limit)


def _leg(party: Party, amount: int) -> Leg:
    return Leg(
        party=party,
        plan=f"{party.value}-std",
        prefix="37410",
        description="Armenia Yerevan",
        rate_per_min=Decimal("0.0420"),
        connection_fee=Decimal("0"),
        connection_sec=0,
        billing_block_sec=1,
        valid_since=T0 - 86_400_000_000,
        charged_sec=61,
        amount=amount,
    )


def make_calls(n: int, start: int = 0) -> list[Transaction]:
    """n rated three-leg call transactions (4 postings each), numbered from `start`."""
    return [
        tx.call_tx(entry, "USD", T0 + start + i)
        for i, entry in enumerate(make_entries(n, start))
    ]


def make_entries(n: int, start: int = 0) -> list[CallEntry]:
    """n rated three-leg calls over 50 customers and 200 clients, numbered from `start`."""
    out = []
    for i in range(start, start + n):
        legs = (
            _leg(Party.CUSTOMER, 42_700),
            _leg(Party.VMGATECLIENT, 30_500),
            _leg(Party.RESELLER, 1_220),
        )
        entry = CallEntry(
            call_uid=f"{i:024x}",
            call_id=f"{i}-bench@10.0.0.1",
            trunk=f"t{i % 50}",
            customer=f"c{i % 50}",
            client=f"gw{i % 200}",
            network="yerevan-1",
            reseller=f"r{i % 5}",
            caller="1000",
            callee="0037410000000",
            number="37410000000",
            start=T0 + i * 1000,
            answer=T0 + i * 1000 + 2_000_000,
            end=T0 + i * 1000 + 63_000_000,
            billsec=61,
            sip_code=200,
            disposition="answered",
            legs=legs,
            margin=42_700 - 30_500 - 1_220,
        )
        out.append(entry)
    return out


def make_payments(n: int) -> list[Transaction]:
    """n customer payments (2 postings each)."""
    return [tx.payment_in(f"c{i % 50}", 1_000_000, f"bank-{i}", T0 + i, "USD") for i in range(n)]


async def through_writer(
    path: str, work: list[Transaction] | list[CallEntry]
) -> tuple[float, list[float]]:
    """Seconds to durably commit every transaction through Ledger, and per-group latencies.

    Call entries are turned into transactions (`call_tx`) in the timed loop, right before
    `submit_nowait`, as vmgated's pipeline does; the loop yields to the event loop every
    YIELD_EVERY submissions, as the daemon does between datagram batches. Each future gets a
    done-callback and is not kept (vmgated `App._submit`): the clock stops when the last
    acknowledgement arrives, and any failed transaction fails the run.
    """
    ledger = await Ledger.open(path)
    latencies: list[float] = []
    ledger.on_commit = lambda size, seconds: latencies.append(seconds)
    left = len(work)
    done = asyncio.get_running_loop().create_future()
    if not work:
        done.set_result(None)
    failures: list[BaseException] = []

    room = asyncio.Event()
    submitted = 0

    def acked(fut: asyncio.Future[Receipt]) -> None:
        nonlocal left
        exc = fut.exception()
        if exc is not None:
            failures.append(exc)
        left -= 1
        if left == 0:
            done.set_result(None)
        if submitted - (len(work) - left) < WINDOW:
            room.set()

    started = time.perf_counter()
    for i, w in enumerate(work):
        if WINDOW and submitted - (len(work) - left) >= WINDOW:
            room.clear()
            await room.wait()
        submitted += 1
        t = tx.call_tx(w, "USD", T0 + i) if isinstance(w, CallEntry) else w
        while True:
            try:
                ledger.submit_nowait(t).add_done_callback(acked)
                break
            except LedgerFull:
                await asyncio.sleep(0.001)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    await done
    elapsed = time.perf_counter() - started
    await ledger.close()
    if failures:
        raise RuntimeError(f"{len(failures)} transactions failed, first: {failures[0]!r}")
    return elapsed, latencies


class Rows(NamedTuple):
    """The rows the writer would write for some transactions, chained."""

    tx: list[tuple[object, ...]]
    postings: list[tuple[object, ...]]
    calls: list[tuple[object, ...]]
    payments: list[tuple[object, ...]]


def chain_rows(txs: list[Transaction], seq0: int, prev: bytes) -> tuple[Rows, bytes]:
    """Encode and hash-chain `txs` as seqs seq0+1…; their rows and the last hash."""
    rows = Rows([], [], [], [])
    for seq, t in enumerate(txs, seq0 + 1):
        enc = encode(t)
        link = chain_hash(prev, seq, t.created, enc.digest)
        rows.tx.append(
            (
                seq,
                t.key,
                t.kind.value,
                t.currency,
                t.created,
                t.reason,
                enc.digest.hex(),
                prev.hex(),
                link.hex(),
            )
        )
        rows.postings.extend((seq, i, a, m) for i, (a, m) in enumerate(enc.postings))
        if enc.call_row is not None:
            rows.calls.append((seq, *enc.call_row))
        if enc.payment_row is not None:
            rows.payments.append((seq, *enc.payment_row))
        prev = link
    return rows, prev


def insert_rows(conn: sqlite3.Connection, rows: Rows) -> None:
    """One SQLite transaction: executemany per table, COMMIT."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows.tx)
    conn.executemany("INSERT INTO postings VALUES (?, ?, ?, ?)", rows.postings)
    conn.executemany(INSERT_CALL, rows.calls)
    conn.executemany(INSERT_PAYMENT, rows.payments)
    conn.execute("COMMIT")


def open_raw(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection on a new ledger file (the store's pragmas and schema)."""
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    migrate(conn)
    return conn


def raw_executemany(path: str, txs: list[Transaction], group: int = 2000) -> float:
    """Seconds to insert the same rows with plain sqlite3 executemany, one COMMIT per group.

    Rows are encoded and chained before the clock starts: this is SQLite's floor alone.
    """
    conn = open_raw(path)
    groups = []
    prev = bytes(32)
    for lo in range(0, len(txs), group):
        rows, prev = chain_rows(txs[lo : lo + group], lo, prev)
        groups.append(rows)
    started = time.perf_counter()
    for rows in groups:
        insert_rows(conn, rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run(
    label: str, work: list[Transaction] | list[CallEntry], postings_each: int
) -> None:
    """Measure one workload through the writer and raw, print one table row each."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        # The inputs stand for calls that arrive over time, not a heap the daemon holds:
        # frozen, as vmgated freezes what it holds for long, so that the collector's walks
        # over them (20–30% of the run with CPython's defaults) are not counted as the
        # ledger's cost. Everything the writer makes is collected as in the daemon.
        if FREEZE_INPUTS:
            gc.collect()
            gc.freeze()
        elapsed, lat = asyncio.run(through_writer(str(Path(tmp, "w.db")), work))
        txs = [
            tx.call_tx(w, "USD", T0 + i) if isinstance(w, CallEntry) else w
            for i, w in enumerate(work)
        ]
        raw = raw_executemany(str(Path(tmp, "raw.db")), txs)
        del txs
        if FREEZE_INPUTS:
            gc.unfreeze()
    n = len(work)
    print(
        f"| {label} writer | {n} | {n / elapsed:,.0f} | {n * postings_each / elapsed:,.0f} "
        f"| {_pct(lat, 0.5) * 1000:.1f} | {_pct(lat, 0.99) * 1000:.1f} | {len(lat)} |"
    )
    print(
        f"| {label} raw executemany (baseline) | {n} | {n / raw:,.0f} "
        f"| {n * postings_each / raw:,.0f} | – | – | – |"
    )


def main() -> None:
    """Run both workloads and print a markdown table."""
    global FREEZE_INPUTS, WINDOW
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--payments", type=int, default=50_000)
    parser.add_argument("--cpython-gc", action="store_true",
                        help="keep CPython's collector thresholds and do not freeze the "
                        "inputs (the figures before 2026-11-24)")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="most transactions in flight (submitted, not yet acknowledged); "
                        "0 submits without waiting (the figures before 2026-11-24)")
    args = parser.parse_args()
    WINDOW = args.window
    if args.cpython_gc:
        FREEZE_INPUTS = False
    else:
        tune_collector()  # the daemon's collector thresholds (vmgated.heap)
    print(
        "| workload | tx | tx/s durable | postings/s durable | commit p50 ms "
        "| commit p99 ms | groups |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    run("3-leg calls (4 postings + call row)", make_entries(args.calls), 4)
    run("payments (2 postings + payment row)", make_payments(args.payments), 2)


if __name__ == "__main__":
    main()
