"""`ledger verify`: a clean file passes; every kind of edit behind the ledger's back is caught
at the seq where it was made (tamper tests: sqlite3 with the guards dropped)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from test_ledger_fixtures import T0, call

from ledger import transactions as txs
from ledger.store import APPEND_ONLY_TABLES, Ledger
from ledger.verify import verify


def build(path: Path, n: int = 9) -> None:
    """A ledger of n calls and payments with checkpoints every 4 transactions."""

    async def go() -> None:
        ledger = await Ledger.open(path, checkpoint_every=4)
        for i in range(n):
            if i % 3 == 2:
                await ledger.submit(txs.payment_in("acme", 1_000 + i, f"ref-{i}", T0 + i, "USD"))
            else:
                await ledger.submit(txs.call_tx(call(f"u{i}"), "USD", T0 + i))
        await ledger.close()

    asyncio.run(go())


def tamper(path: Path, sql: str, *args: object) -> None:
    """Edit the file the way an attacker with sqlite3 would: drop the guards, change rows."""
    with sqlite3.connect(path) as conn:
        for table in APPEND_ONLY_TABLES:
            for op in ("update", "delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op}")
        conn.execute(sql, args)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    build(path)
    return path


def test_a_clean_ledger_verifies(db: Path) -> None:
    report = verify(db)
    assert report.ok, report
    assert (report.transactions, report.head_seq) == (9, 9)
    assert report.checkpoints >= 2
    assert "OK" in str(report)


def test_changed_amount_is_reported_at_its_seq(db: Path) -> None:
    tamper(db, "UPDATE postings SET amount = amount + 1 WHERE seq = 5 AND idx = 0")
    report = verify(db)
    assert not report.ok and report.first_bad_seq == 5
    assert "sum" in (report.problem or "")


def test_balanced_edit_of_two_postings_breaks_the_digest(db: Path) -> None:
    tamper(db, "UPDATE postings SET amount = amount + 7 WHERE seq = 4 AND idx = 0")
    tamper(db, "UPDATE postings SET amount = amount - 7 WHERE seq = 4 AND idx = 1")
    report = verify(db)
    assert report.first_bad_seq == 4 and "digest" in (report.problem or "")


def test_edited_call_history_is_caught(db: Path) -> None:
    tamper(db, "UPDATE calls SET billsec = 1 WHERE seq = 2")
    assert verify(db).first_bad_seq == 2


def test_edited_payment_reference_is_caught(db: Path) -> None:
    tamper(db, "UPDATE payments SET reference = 'other' WHERE seq = 3")
    assert verify(db).first_bad_seq == 3


def test_recomputed_digest_still_breaks_the_chain(db: Path) -> None:
    tamper(db, "UPDATE transactions SET digest = ? WHERE seq = 6", "ab" * 32)
    report = verify(db)
    assert report.first_bad_seq == 6


def test_deleted_transaction_is_a_seq_gap(db: Path) -> None:
    tamper(db, "DELETE FROM postings WHERE seq = 7")
    tamper(db, "DELETE FROM calls WHERE seq = 7")
    tamper(db, "DELETE FROM transactions WHERE seq = 7")
    report = verify(db)
    assert report.first_bad_seq == 8 and "missing" in (report.problem or "")


def test_orphan_posting_is_caught(db: Path) -> None:
    tamper(db, "INSERT INTO postings VALUES (99, 0, 'tenant', 5)")
    assert not verify(db).ok


def test_checkpoint_that_disagrees_with_the_postings_is_caught(db: Path) -> None:
    tamper(db, "UPDATE checkpoints SET balance = balance + 1 WHERE seq = 4 AND account = 'tenant'")
    report = verify(db)
    assert report.first_bad_seq == 4 and "checkpoint" in (report.problem or "")


def test_missing_used_rate_row_is_caught(db: Path) -> None:
    tamper(db, "DELETE FROM used_rates WHERE plan = 'customer-plan'")
    report = verify(db)
    assert not report.ok and "used_rates" in (report.problem or "")


def test_reopening_a_ledger_with_a_forged_checkpoint_is_refused(db: Path) -> None:
    tamper(
        db,
        "UPDATE checkpoint_marks SET hash = ? WHERE seq = (SELECT MAX(seq) FROM checkpoint_marks)",
        "cd" * 32,
    )
    with pytest.raises(Exception, match="checkpoint"):
        asyncio.run(Ledger.open(db))
