"""Child of test_ledger_crash.py: submit transactions as fast as the ledger takes them and
append each acknowledged key to a file, flushed (os.write) before the next ack is recorded.

    python ledger_crash_child.py LEDGER.db ACKS.txt RUN

Keys are unique per RUN; every 7th submission repeats an earlier key of this run with the
same content, so duplicates cross group boundaries and kills.
"""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal

from ledger import transactions as txs
from ledger.errors import LedgerFull
from ledger.model import CallEntry, Transaction
from ledger.store import Ledger
from rating.model import Leg, Party

T0 = 1_795_000_000_000_000


def _leg(party: Party, amount: int) -> Leg:
    return Leg(
        party=party,
        plan=f"{party.value}-plan",
        prefix="374",
        description="Armenia",
        rate_per_min=Decimal("0.05"),
        connection_fee=Decimal("0"),
        connection_sec=0,
        billing_block_sec=1,
        valid_since=T0,
        charged_sec=60,
        amount=amount,
    )


def make(run: int, i: int) -> Transaction:
    """Transaction number i of a run: mostly calls, some payments and payouts."""
    if i % 5 == 4:
        return txs.payment_in(f"c{i % 3}", 1_000 + i, f"r{run}-{i}", T0 + i, "USD")
    if i % 11 == 10:
        return txs.client_payout(f"gw{i % 4}", 500, f"r{run}-{i}", T0 + i, "USD")
    entry = CallEntry(
        call_uid=f"r{run}-{i}",
        call_id=f"{run}.{i}@x",
        trunk="t1",
        customer=f"c{i % 3}",
        client=f"gw{i % 4}",
        network="n1",
        reseller="r-alpha" if i % 2 else "direct",
        caller="1",
        callee="374100",
        number="374100",
        start=T0 + i,
        answer=T0 + i + 1,
        end=T0 + i + 60_000_000,
        billsec=60,
        sip_code=200,
        disposition="answered",
        legs=(_leg(Party.CUSTOMER, 5_000), _leg(Party.VMGATECLIENT, 3_000))
        + ((_leg(Party.RESELLER, 100),) if i % 2 else ()),
        margin=2_000 - (100 if i % 2 else 0),
    )
    return txs.call_tx(entry, "USD", T0 + i)


async def main(db: str, acks: str, run: int) -> None:
    ledger = await Ledger.open(
        db, batch_max=500, batch_ms=1.0, queue_max=4_000, checkpoint_every=2_000
    )
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending: set[asyncio.Future[object]] = set()

    def acked(key: str, fut: asyncio.Future[object]) -> None:
        pending.discard(fut)
        if not fut.cancelled() and fut.exception() is None:
            os.write(fd, f"{key}\n".encode())

    i = 0
    while True:
        n = i - 3 if i % 7 == 6 else i  # a duplicate of an earlier transaction of this run
        tx = make(run, n)
        try:
            fut = ledger.submit_nowait(tx)
        except LedgerFull:
            await asyncio.sleep(0.001)
            continue
        pending.add(fut)  # type: ignore[arg-type]
        fut.add_done_callback(lambda f, key=tx.key: acked(key, f))  # type: ignore[misc]
        i += 1
        if i % 200 == 0:
            await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
