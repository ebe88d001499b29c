"""The writer's groups, one after the other through the write process: they stay right when
they share keys or rate rows, when the file already holds some of their keys, and after a
group that failed. (Until 2026-11-24 the loop planned group N+1 while N was written; the
tests of that pipeline stay, as tests of the same promises.)"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from test_ledger_fixtures import T0, call
from test_ledger_store import count, pay, with_ledger

from ledger import transactions as txs
from ledger.errors import InvalidTransaction, KeyConflict
from ledger.model import Posting, Receipt
from ledger.store import Ledger
from ledger.verify import verify


def test_groups_in_flight_together_share_a_new_rate_row_once(tmp_path: Path) -> None:
    db = tmp_path / "l.db"

    async def body(ledger: Ledger) -> list[Receipt]:
        futs = [
            ledger.submit_nowait(txs.call_tx(call(f"u{i}"), "USD", T0 + i)) for i in range(60)
        ]
        return list(await asyncio.gather(*futs))

    receipts = with_ledger(db, body, batch_max=7, batch_ms=0)
    assert [r.seq for r in receipts] == list(range(1, 61))
    assert not any(r.existed for r in receipts)
    # Every call is priced by the same three deck rows: each is recorded once, at seq 1.
    assert count(db, "SELECT COUNT(*) FROM used_rates") == 3
    assert count(db, "SELECT MAX(seq) FROM used_rates") == 1
    assert verify(db).ok


def test_a_key_repeated_in_the_next_group_gets_the_first_receipt(tmp_path: Path) -> None:
    db = tmp_path / "l.db"

    async def body(ledger: Ledger) -> tuple[list[Receipt], BaseException | None]:
        futs = [ledger.submit_nowait(pay(f"p{i}")) for i in range(10)]
        futs += [ledger.submit_nowait(pay(f"p{i}")) for i in range(10)]  # same content
        clash = ledger.submit_nowait(pay("p3", amount=5))  # other content
        receipts = list(await asyncio.gather(*futs))
        try:
            await clash
        except KeyConflict as exc:
            return receipts, exc
        return receipts, None

    receipts, clash = with_ledger(db, body, batch_max=4, batch_ms=0)
    assert [r.existed for r in receipts] == [False] * 10 + [True] * 10
    assert receipts[10:] == [dataclasses.replace(r, existed=True) for r in receipts[:10]]
    assert isinstance(clash, KeyConflict) and clash.seq == receipts[3].seq
    assert count(db, "SELECT COUNT(*) FROM transactions") == 10
    assert verify(db).ok


def test_keys_already_in_the_file_are_found_and_the_rest_of_the_group_is_written(
    tmp_path: Path,
) -> None:
    db = tmp_path / "l.db"
    first = with_ledger(db, lambda ledger: ledger.submit(pay("old")))

    async def body(ledger: Ledger) -> list[Receipt | BaseException]:
        futs = [
            ledger.submit_nowait(pay("new-1")),
            ledger.submit_nowait(pay("old")),
            ledger.submit_nowait(pay("new-2")),
        ]
        clash = ledger.submit_nowait(pay("old", amount=7))
        return list(await asyncio.gather(*futs, clash, return_exceptions=True))

    new1, old, new2, clash = with_ledger(db, body, batch_max=100, batch_ms=20)
    assert old == dataclasses.replace(first, existed=True)
    assert isinstance(new1, Receipt) and isinstance(new2, Receipt)
    assert (new1.seq, new2.seq) == (2, 3) and not new1.existed and not new2.existed
    assert isinstance(clash, KeyConflict) and clash.seq == 1
    assert count(db, "SELECT COUNT(*) FROM transactions") == 3
    assert verify(db).ok


def test_a_failed_group_makes_the_next_one_planned_again_from_the_file(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    with_ledger(db, lambda ledger: ledger.submit(pay("p0")))
    # Another writer appends behind the ledger's back: the next group must refuse to chain
    # onto a head it did not write, and so must every group planned after it.
    async def body(ledger: Ledger) -> list[Receipt | BaseException]:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO transactions VALUES (2, 'x', 'adjustment', 'USD', 0, 'r', 'd', "
                "'p', 'h')"
            )
        futs = [ledger.submit_nowait(pay(f"p{i}")) for i in range(1, 9)]
        return list(await asyncio.gather(*futs, return_exceptions=True))

    results = with_ledger(db, body, batch_max=2, batch_ms=0)
    assert all(isinstance(r, Exception) and "another process" in str(r) for r in results)
    assert count(db, "SELECT COUNT(*) FROM transactions") == 2


def test_a_call_tx_is_checked_against_its_legs_even_when_rebuilt_by_hand() -> None:
    entry = call("u9")
    built = txs.call_tx(entry, "USD", T0)
    txs.check(built)  # the memo of call_tx: same entry, same postings object
    forged = dataclasses.replace(
        txs.call_tx(entry, "USD", T0), postings=(Posting("customer:acme", -1), Posting("tenant", 1))
    )
    with pytest.raises(InvalidTransaction, match="rated legs"):
        txs.check(forged)
    # An equal, separately built postings tuple passes the slow comparison.
    txs.check(dataclasses.replace(built, postings=tuple(txs.call_postings(entry))))


def test_big_groups_are_written_in_multi_row_chunks_and_remainders(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    n = 263  # 2 chunks of 100 tx rows + 63, 2 of 250 postings + 26, 5 of 50 calls + 13 ...

    async def body(ledger: Ledger) -> list[Receipt]:
        futs = [ledger.submit_nowait(pay(f"p{i}", 1_000 + i)) for i in range(n)]
        futs += [
            ledger.submit_nowait(txs.call_tx(call(f"u{i}"), "USD", T0 + i)) for i in range(n)
        ]
        return list(await asyncio.gather(*futs))

    receipts = with_ledger(db, body, batch_max=1000, batch_ms=200)
    assert [r.seq for r in receipts] == list(range(1, 2 * n + 1))
    assert count(db, "SELECT COUNT(*) FROM postings") == n * 2 + n * 4
    assert count(db, "SELECT COUNT(*) FROM calls") == n
    assert count(db, "SELECT COUNT(*) FROM payments") == n
    assert count(db, "SELECT SUM(amount) FROM payments") == sum(1_000 + i for i in range(n))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, idx, account, amount FROM postings WHERE seq <= 2")
        assert rows.fetchall() == [
            (1, 0, "customer:acme", 1_000),
            (1, 1, "external", -1_000),
            (2, 0, "customer:acme", 1_001),
            (2, 1, "external", -1_001),
        ]
    assert verify(db).ok


def test_keys_met_one_lookup_at_a_time_are_all_remembered(tmp_path: Path) -> None:
    """Regression (found by hypothesis, hung CI): a group planned against the group ahead
    took r1 from it and r5 as new; r5 was on disk, and the replan, no longer seeing the
    group ahead, took r1 as new, whose lookup then forgot r5: the two took turns forever."""
    db = tmp_path / "l.db"
    # (ref, amount, yield to the loop after submitting): the shrunk failing example.
    plan = [(5, 1, True), (3, 2, False), (5, 1, False), (4, 2, True)]
    plan += [(5, 1, True), (1, 1, False), (1, 1, True), (5, 1, True)]

    async def body(ledger: Ledger) -> list[Receipt]:
        futs = []
        for ref, amount, yield_now in plan:
            futs.append(ledger.submit_nowait(pay(f"r{ref}", amount)))
            if yield_now:
                await asyncio.sleep(0)
        return list(await asyncio.wait_for(asyncio.gather(*futs), 10))

    receipts = with_ledger(db, body, batch_max=3, batch_ms=0.5)
    first = {r.key: r.seq for r in receipts if not r.existed}
    assert sorted(first) == ["pay:r1", "pay:r3", "pay:r4", "pay:r5"]
    assert all(r.seq == first[r.key] for r in receipts)
    assert [r.existed for r in receipts[-2:]] == [True, True]
    assert count(db, "SELECT COUNT(*) FROM transactions") == 4
    assert verify(db).ok


def test_text_that_cannot_be_encoded_fails_its_caller_and_not_its_group(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    bad = txs.payment_in("acme", 5, "ref-\ud800", T0, "USD")  # a lone surrogate: not UTF-8

    async def body(ledger: Ledger) -> list[Receipt | BaseException]:
        futs = [ledger.submit_nowait(pay("a")), ledger.submit_nowait(bad)]
        futs.append(ledger.submit_nowait(pay("b")))
        return list(await asyncio.gather(*futs, return_exceptions=True))

    a, failed, b = with_ledger(db, body, batch_max=10, batch_ms=20)
    assert isinstance(failed, InvalidTransaction) and "surrogate" in str(failed)
    assert isinstance(a, Receipt) and isinstance(b, Receipt) and (a.seq, b.seq) == (1, 2)
    assert count(db, "SELECT COUNT(*) FROM transactions") == 2
    assert verify(db).ok


def test_a_group_leaves_batch_ms_after_the_one_before_not_when_its_answer_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending whenever an answer came in made many small groups under load (an fsync and a
    round of pipe writes each); what comes in during a write waits for the window's end."""
    from ledger.sinkclient import WriteProcess

    slow = WriteProcess.request

    async def slow_request(self: WriteProcess, *message: object) -> object:
        if message[0] == "group":
            await asyncio.sleep(0.1)  # a slow fsync
        return await slow(self, *message)

    monkeypatch.setattr(WriteProcess, "request", slow_request)
    sizes: list[int] = []

    async def body(ledger: Ledger) -> None:
        ledger.on_commit = lambda size, seconds: sizes.append(size)
        first = ledger.submit_nowait(pay("a"))  # idle: leaves after 0.4 s, answered ~0.1 later
        await asyncio.sleep(0.44)
        b = ledger.submit_nowait(pay("b"))  # while "a" is written
        await asyncio.sleep(0.16)
        c = ledger.submit_nowait(pay("c"))  # after "a"'s answer, inside the window
        await asyncio.gather(first, b, c)

    with_ledger(tmp_path / "l.db", body, batch_max=100, batch_ms=400)
    assert sizes == [1, 2]
