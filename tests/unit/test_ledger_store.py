"""The store and its writer: durability rules, exactly-once, back-pressure, append-only,
checkpoints, reports. Real SQLite files in tmp_path; no mocks."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ledger_fixtures import T0, call

from ledger import reports
from ledger import transactions as txs
from ledger.errors import (
    InvalidTransaction,
    KeyConflict,
    LedgerClosed,
    LedgerFull,
    LedgerWriteFailed,
    NotZeroSum,
    SchemaError,
)
from ledger.model import Posting, Transaction, TxKind
from ledger.store import MIGRATIONS, Ledger, append_only_authorizer
from ledger.verify import verify

R = TypeVar("R")


def with_ledger(path: Path, body: Callable[[Ledger], Awaitable[R]], **options: int | float) -> R:
    """Open a ledger, run `body`, close it (always)."""

    async def go() -> R:
        ledger = await Ledger.open(path, **options)  # type: ignore[arg-type]
        try:
            return await body(ledger)
        finally:
            await ledger.close()

    return asyncio.run(go())


def pay(ref: str, amount: int = 1_000_000, customer: str = "acme") -> Transaction:
    return txs.payment_in(customer, amount, ref, T0, "USD")


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_submit_returns_a_durable_receipt_and_updates_balances(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"

    async def body(ledger: Ledger) -> None:
        r1 = await ledger.submit(txs.call_tx(call("a"), "USD", T0))
        r2 = await ledger.submit(pay("bank-1", 5_000_000))
        assert (r1.seq, r2.seq, r1.existed, r2.existed) == (1, 2, False, False)
        assert await ledger.head() == (2, r2.hash)
        summary = ledger.balances.summary("USD")
        assert summary == (10_000, 5_000_000 - 42_000, 30_000, 2_000)

    with_ledger(db, body)
    # A separate connection (another process, after close) sees both: they were committed.
    assert count(db, "SELECT COUNT(*) FROM transactions") == 2
    assert reports.head(db)[0] == 2
    assert verify(db).ok


def test_same_key_same_content_is_a_no_op_even_later_and_in_the_same_group(
    tmp_path: Path,
) -> None:
    async def body(ledger: Ledger) -> None:
        futs = [ledger.submit_nowait(pay("dup")) for _ in range(3)]
        first, *rest = await asyncio.gather(*futs)
        assert not first.existed and all(r.existed and r.seq == first.seq for r in rest)
        later = await ledger.submit(txs.payment_in("acme", 1_000_000, "dup", T0 + 99, "USD"))
        assert later.existed and later.hash == first.hash
        assert ledger.balances.get("USD", "customer:acme") == 1_000_000

    with_ledger(tmp_path / "l.db", body)
    assert count(tmp_path / "l.db", "SELECT COUNT(*) FROM postings") == 2


def test_same_key_other_content_is_a_key_conflict(tmp_path: Path) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.submit(pay("k", 10))
        with pytest.raises(KeyConflict) as info:
            await ledger.submit(pay("k", 11))
        assert info.value.seq == 1
        # Inside one group too: the second of two different contents is refused.
        a, b = ledger.submit_nowait(pay("k2", 1)), ledger.submit_nowait(pay("k2", 2))
        assert (await a).seq == 2
        with pytest.raises(KeyConflict):
            await b

    with_ledger(tmp_path / "l.db", body)


def test_not_zero_sum_is_raised_before_anything_is_written(tmp_path: Path) -> None:
    bad = Transaction("adj:x", TxKind.ADJUSTMENT, "USD", (Posting("tenant", 5),), T0, "why")

    async def body(ledger: Ledger) -> None:
        with pytest.raises(NotZeroSum):
            ledger.submit_nowait(bad)
        assert ledger.queue_depth == 0
        assert await ledger.head() == (0, "0" * 64)

    with_ledger(tmp_path / "l.db", body)
    assert count(tmp_path / "l.db", "SELECT COUNT(*) FROM transactions") == 0


def test_full_queue_raises_ledger_full_at_once_and_drops_nothing_accepted(tmp_path: Path) -> None:
    async def body(ledger: Ledger) -> None:
        accepted = [ledger.submit_nowait(pay(f"r{i}")) for i in range(5)]
        assert ledger.queue_depth == 5
        with pytest.raises(LedgerFull):
            ledger.submit_nowait(pay("r5"))
        receipts = await asyncio.gather(*accepted)
        assert sorted(r.seq for r in receipts) == [1, 2, 3, 4, 5]
        assert (await ledger.submit(pay("r5"))).seq == 6  # room again after the commit

    with_ledger(tmp_path / "l.db", body, queue_max=5, batch_max=2)


def test_closed_ledger_refuses_new_transactions(tmp_path: Path) -> None:
    async def go() -> None:
        ledger = await Ledger.open(tmp_path / "l.db")
        fut = ledger.submit_nowait(pay("before"))
        await ledger.close()
        assert fut.done() and fut.result().seq == 1  # close drained the queue
        with pytest.raises(LedgerClosed):
            ledger.submit_nowait(pay("after"))

    asyncio.run(go())


def test_groups_respect_batch_max_and_report_commit_seconds(tmp_path: Path) -> None:
    sizes: list[int] = []

    async def body(ledger: Ledger) -> None:
        ledger.on_commit = lambda size, seconds: sizes.append(size) if seconds >= 0 else None
        await asyncio.gather(*(ledger.submit_nowait(pay(f"g{i}")) for i in range(25)))

    with_ledger(tmp_path / "l.db", body, batch_max=10)
    assert sum(sizes) == 25 and max(sizes) <= 10 and len(sizes) >= 3


def test_update_and_delete_are_refused_by_triggers(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    with_ledger(db, lambda ledger: ledger.submit(pay("t")))
    with sqlite3.connect(db) as conn:
        for sql in (
            "UPDATE postings SET amount = 1",
            "DELETE FROM transactions",
            "UPDATE payments SET amount = 2",
            "DELETE FROM checkpoints",
            "INSERT OR REPLACE INTO transactions SELECT * FROM transactions",
        ):
            conn.execute("PRAGMA recursive_triggers=ON")
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)


def test_the_write_connection_authorizer_refuses_update_delete_drop(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (a INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.set_authorizer(append_only_authorizer)
    conn.execute("INSERT INTO t VALUES (2)")  # appending is fine
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2
    for sql in ("UPDATE t SET a = 3", "DELETE FROM t", "DROP TABLE t", "ALTER TABLE t ADD b"):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            conn.execute(sql)


def test_the_ledger_installs_the_authorizer_on_its_write_connection(tmp_path: Path) -> None:
    async def body(ledger: Ledger) -> None:
        # The write process's own connection (the daemon never sends a statement): the
        # refusal travels back as the sqlite3 error it is.
        sink = ledger._writer._sink
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await sink.request("execute", "DELETE FROM transactions", ())
        assert await sink.request("execute", "SELECT count(*) FROM transactions", ()) == [(0,)]

    with_ledger(tmp_path / "l.db", body)


def test_schema_is_versioned_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    with_ledger(db, lambda ledger: ledger.head())
    assert count(db, "SELECT MAX(version) FROM schema_version") == len(MIGRATIONS)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaError, match="newer"):
        with_ledger(db, lambda ledger: ledger.head())


def test_reopen_rebuilds_balances_from_checkpoint_plus_tail(tmp_path: Path) -> None:
    db = tmp_path / "l.db"

    async def fill(ledger: Ledger) -> None:
        for i in range(12):
            await ledger.submit(pay(f"p{i}", 100 + i, customer=f"c{i % 3}"))

    with_ledger(db, fill, checkpoint_every=5)
    marks = count(db, "SELECT COUNT(*) FROM checkpoint_marks")
    assert marks >= 3  # every 5 transactions and at close
    with sqlite3.connect(db) as conn:
        # Drop the close-time checkpoint's effect by reading only the tail after seq 10.
        assert conn.execute("SELECT MAX(seq) FROM checkpoint_marks").fetchone()[0] == 12

    async def reopen(ledger: Ledger) -> None:
        want = {f"c{k}": sum(100 + i for i in range(12) if i % 3 == k) for k in range(3)}
        got = {a.id: a.balance for a in ledger.balances.accounts("USD") if a.kind == "customer"}
        assert got == want
        await ledger.submit(pay("p12", 7, customer="c0"))
        assert ledger.balances.get("USD", "customer:c0") == want["c0"] + 7

    with_ledger(db, reopen, checkpoint_every=1000)
    assert reports.balances(db, "USD")[0].customer_total == sum(100 + i for i in range(12)) + 7
    assert verify(db).ok


def test_linked_transactions_are_all_or_nothing(tmp_path: Path) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.submit(pay("taken", 1))
        with pytest.raises(KeyConflict):
            await ledger.submit_linked([pay("fresh", 1), pay("taken", 2)])
        assert (await ledger.head())[0] == 1
        receipts = await ledger.submit_linked([pay("fresh", 1), pay("fresh2", 1)])
        assert [r.seq for r in receipts] == [2, 3]

    with_ledger(tmp_path / "l.db", body)


def test_rerate_keeps_history_and_reports_show_the_latest_rating(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    old = call("c1", charge=None)  # customer leg unrated: nothing charged yet
    new = call("c1", charge=50_000)

    async def body(ledger: Ledger) -> None:
        await ledger.submit(txs.call_tx(old, "USD", T0))
        assert [c.call_uid for c in await ledger.unrated_calls()] == ["c1"]
        pair = txs.rerate(old, new, "USD", T0 + 1)
        first = await ledger.submit_linked(pair)
        again = await ledger.submit_linked(txs.rerate(old, new, "USD", T0 + 2))
        assert [r.existed for r in again] == [True, True]
        assert [r.seq for r in again] == [r.seq for r in first]
        assert await ledger.get_call("c1") == new
        assert await ledger.unrated_calls() == []
        assert ledger.balances.get("USD", "customer:acme") == -50_000
        assert ledger.balances.summary("USD").my_balance == 50_000 - 30_000 - 2_000

    with_ledger(db, body)
    assert count(db, "SELECT COUNT(*) FROM calls WHERE call_uid = 'c1'") == 2  # both kept
    assert reports.calls(db) == [new]
    assert verify(db).ok


def test_used_rate_rows_lists_deck_rows_with_history(tmp_path: Path) -> None:
    async def body(ledger: Ledger) -> frozenset[tuple[str, str, int]]:
        await ledger.submit(txs.call_tx(call("u", payout=None), "USD", T0))
        return await ledger.used_rate_rows()

    rows = with_ledger(tmp_path / "l.db", body)
    since = T0 - 86_400_000_000
    assert rows == {("customer-plan", "374", since), ("reseller-plan", "374", since)}

    async def reopened(ledger: Ledger) -> frozenset[tuple[str, str, int]]:
        return await ledger.used_rate_rows()

    assert with_ledger(tmp_path / "l.db", reopened) == rows


def test_reports_filter_calls_and_list_payments_newest_first(tmp_path: Path) -> None:
    db = tmp_path / "l.db"

    async def body(ledger: Ledger) -> None:
        await ledger.submit(txs.call_tx(call("a", start=T0), "USD", T0))
        await ledger.submit(txs.call_tx(call("b", start=T0 + 10, customer="zeta"), "USD", T0))
        await ledger.submit(txs.call_tx(call("c", start=T0 + 20, reseller="direct"), "USD", T0))
        await ledger.submit(txs.call_tx(call("d", start=T0 + 30, payout=None), "USD", T0))
        await ledger.submit(pay("in-1", 5))
        await ledger.submit(txs.client_payout("gw-01", 3, "out-1", T0 + 1, "USD"))

    with_ledger(db, body)
    assert [c.call_uid for c in reports.calls(db)] == ["d", "c", "b", "a"]
    assert [c.call_uid for c in reports.calls(db, customer="zeta")] == ["b"]
    assert [c.call_uid for c in reports.calls(db, reseller="direct")] == ["c"]
    assert [c.call_uid for c in reports.calls(db, since=T0 + 10, until=T0 + 30)] == ["c", "b"]
    assert [c.call_uid for c in reports.calls(db, unrated=True)] == ["d"]
    assert [c.call_uid for c in reports.calls(db, limit=1)] == ["d"]
    pays = reports.payments(db)
    assert [(p.direction, p.target_type, p.reference, p.amount) for p in pays] == [
        ("OUT", "VMGateClient", "out-1", 3),
        ("IN", "Customer", "in-1", 5),
    ]


def test_reports_are_read_only(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    with_ledger(db, lambda ledger: ledger.submit(pay("x")))
    conn = reports.connect_ro(db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.close()


def test_a_bad_type_fails_its_caller_not_the_group(tmp_path: Path) -> None:
    bad = txs.payment_in("acme", 5, "typed", T0, "USD")
    bad = Transaction(bad.key, bad.kind, bad.currency, bad.postings, 1.5, payment=bad.payment)  # type: ignore[arg-type]

    async def body(ledger: Ledger) -> None:
        with pytest.raises(InvalidTransaction, match="created"):
            ledger.submit_nowait(bad)
        assert (await ledger.submit(pay("fine"))).seq == 1

    with_ledger(tmp_path / "l.db", body)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 5), st.integers(1, 2), st.booleans()), min_size=1, max_size=40
    ),
    batch_max=st.integers(1, 8),
)
def test_any_interleaving_of_duplicates_yields_each_key_once(
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[tuple[int, int, bool]],
    batch_max: int,
) -> None:
    db = tmp_path_factory.mktemp("h") / "l.db"
    first_amount: dict[int, int] = {}

    async def body(ledger: Ledger) -> None:
        pending: list[tuple[int, int, asyncio.Future[object]]] = []
        for ref, amount, yield_now in plan:
            first_amount.setdefault(ref, amount)
            pending.append((ref, amount, ledger.submit_nowait(pay(f"r{ref}", amount))))  # type: ignore[arg-type]
            if yield_now:
                await asyncio.sleep(0)
        seqs: dict[int, int] = {}
        for ref, amount, fut in pending:
            try:
                receipt = await fut
            except KeyConflict:
                assert amount != first_amount[ref]
                continue
            assert amount == first_amount[ref]
            assert seqs.setdefault(ref, receipt.seq) == receipt.seq  # type: ignore[attr-defined]

    with_ledger(db, body, batch_max=batch_max, batch_ms=0.5)
    with sqlite3.connect(db) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM transactions")]
        total = conn.execute("SELECT SUM(amount) FROM postings WHERE account != 'external'")
        assert total.fetchone()[0] == sum(first_amount.values())
    assert sorted(keys) == sorted({f"pay:r{ref}" for ref, _, _ in plan})
    assert verify(db).ok


def test_a_bug_while_answering_fails_the_taken_group_instead_of_stranding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer used to take a group off the queue, die planning it (a struct.error in the
    # chain hash, found by an audit) and leave those callers waiting forever. The planning is
    # the write process's now (a bug there fails one request: test_ledger_planner.py); what
    # is left on the loop is taking in its answer.
    import ledger.writer as writer_module

    def broken(*args: object) -> None:
        raise RuntimeError("planning bug")

    async def body(ledger: Ledger) -> None:
        monkeypatch.setattr(writer_module.Writer, "_commit", broken)
        futures = [ledger.submit_nowait(pay(f"P-{i}")) for i in range(3)]
        done, pending = await asyncio.wait(futures, timeout=10)
        assert not pending, "callers left waiting after the writer stopped"
        for fut in done:
            with pytest.raises(Exception, match="ledger writer stopped"):
                fut.result()
        with pytest.raises(LedgerClosed):
            ledger.submit_nowait(pay("P-later"))

    checked: list[bool] = []

    async def run(ledger: Ledger) -> None:
        await body(ledger)
        checked.append(True)

    # Closing a ledger whose writer died reports how it died; the body ran to its end first.
    with pytest.raises(RuntimeError, match="planning bug"):
        with_ledger(tmp_path / "l.db", run)
    assert checked == [True]


def test_a_full_disk_is_reported_as_such_and_the_same_transactions_commit_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_FULL ("database or disk is full"; here from max_page_count, as a full disk
    gives it) ends the transaction inside SQLite. The failed group and the closing
    checkpoint must say so: a ROLLBACK sent after it failed with "cannot rollback - no
    transaction is active", and that was all the log showed of the checkpoint."""
    path = tmp_path / "l.db"

    async def limit(ledger: Ledger, extra_pages: int | None) -> None:
        sink = ledger._writer._sink  # the write connection: its own page limit
        [(pages_now,)] = await sink.request("execute", "PRAGMA page_count", ())
        pages = 1 << 30 if extra_pages is None else pages_now + extra_pages
        await sink.request("execute", f"PRAGMA max_page_count={pages}", ())

    async def body(ledger: Ledger) -> None:
        await limit(ledger, 0)
        batch = [pay(f"P-{i}", customer=f"c{i}") for i in range(400)]
        failed = await asyncio.gather(
            *(ledger.submit_nowait(t) for t in batch), return_exceptions=True
        )
        assert all(isinstance(e, LedgerWriteFailed) for e in failed)
        assert "database or disk is full" in str(failed[0])
        assert ledger.balances.get("USD", "customer:c0") == 0
        await limit(ledger, None)  # room again: the same transactions, once
        receipts = await asyncio.gather(*(ledger.submit_nowait(t) for t in batch))
        assert [r.existed for r in receipts] == [False] * 400
        assert ledger.balances.get("USD", "customer:c0") == 1_000_000
        await limit(ledger, 0)  # the closing checkpoint (401 accounts) does not fit

    with caplog.at_level("WARNING", logger="ledger.writer"):
        with_ledger(path, body)
    logged = caplog.text
    assert "checkpoint at seq 400 not written: database or disk is full" in logged
    assert "cannot rollback" not in logged
    assert count(path, "SELECT count(*) FROM transactions") == 400
    assert verify(path).ok
