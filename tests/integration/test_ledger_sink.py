"""The ledger's write process (ledger/sink.py): one writer per file, it dies with its parent,
and when it is killed mid-run the ledger starts another and loses or doubles nothing.

Real processes, real signals, real SQLite files; nothing mocked."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ledger import transactions as txs
from ledger.errors import LedgerError, LedgerWriteFailed
from ledger.model import Receipt
from ledger.sink import lock_file
from ledger.store import Ledger
from ledger.verify import verify
from tests.e2e.stack import pid_alive

T0 = 1_795_000_000_000_000
KILLS = 6
SEED = 20261124


def test_a_second_writer_waits_for_the_lock_then_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    held = lock_file(path, wait_s=0.0)
    try:
        started = time.monotonic()
        with pytest.raises(LedgerError, match="another process is writing this ledger"):
            lock_file(path, wait_s=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        os.close(held)
    os.close(lock_file(path, wait_s=0.0))  # released with its descriptor


def test_a_ledger_open_in_another_process_holds_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")

    async def body() -> None:
        ledger = await Ledger.open(path)
        try:
            with pytest.raises(LedgerError, match="another process is writing"):
                lock_file(path, wait_s=0.1)
        finally:
            await ledger.close()
        os.close(lock_file(path, wait_s=1.0))  # closed: free again

    asyncio.run(body())


def test_the_write_process_dies_with_its_parent_and_frees_the_file(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from ledger import transactions as txs
        from ledger.store import Ledger

        async def main():
            ledger = await Ledger.open(sys.argv[1])
            await ledger.submit(txs.payment_in("acme", 5, "P-1", 1, "USD"))
            print(ledger._writer._sink.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        sink_pid = int(parent.stdout.readline())
        assert pid_alive(sink_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while pid_alive(sink_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(sink_pid), "the write process outlived its parent's SIGKILL"

    async def reopen() -> int | None:
        ledger = await Ledger.open(path)
        try:
            return ledger.balances.get("USD", "customer:acme")
        finally:
            await ledger.close()

    assert asyncio.run(reopen()) == 5  # the acknowledged payment, and the file is free
    assert verify(path).ok


def test_a_killed_write_process_is_replaced_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    """SIGKILL the write process at seeded moments while groups are in flight. Every caller
    hears either a Receipt or LedgerWriteFailed; resubmitting the failed ones (what the
    daemon's backlog does) commits each key exactly once, and the file verifies."""
    rng = random.Random(SEED)
    path = tmp_path / "l.db"
    n = 6_000
    batch = [txs.payment_in(f"c{i % 40}", 1_000 + i, f"P-{i}", T0 + i, "USD") for i in range(n)]

    async def body() -> tuple[set[int], int]:
        ledger = await Ledger.open(path, batch_max=100, batch_ms=1)
        pids: set[int] = set()
        first_failures = 0
        try:
            futures = []
            kills = sorted(rng.sample(range(200, n - 200), KILLS))
            for i, tx in enumerate(batch):
                futures.append(ledger.submit_nowait(tx))
                if kills and i == kills[0]:
                    kills.pop(0)
                    await asyncio.sleep(rng.uniform(0, 0.01))
                    while ledger._writer._sink.pid in pids:  # the last one killed: not yet
                        await asyncio.sleep(0.005)  # replaced (that needs the next group)
                    pid = ledger._writer._sink.pid
                    pids.add(pid)
                    os.kill(pid, signal.SIGKILL)
                if i % 50 == 0:
                    await asyncio.sleep(0)
            results = await asyncio.gather(*futures, return_exceptions=True)
            retry = []
            for tx, result in zip(batch, results, strict=True):
                if isinstance(result, Receipt):
                    assert not result.existed
                else:
                    assert isinstance(result, LedgerWriteFailed), repr(result)
                    retry.append(tx)
            first_failures = len(retry)
            for tx in retry:
                receipt = await ledger.submit(tx)
                assert receipt.key == tx.key
            pids.add(ledger._writer._sink.pid)
            expected = sum(1_000 + i for i in range(n) if i % 40 == 7)
            assert ledger.balances.get("USD", "customer:c7") == expected
        finally:
            await ledger.close()
        return pids, first_failures

    pids, _failed = asyncio.run(body())
    assert len(pids) == KILLS + 1, "each kill started a new write process"
    with sqlite3.connect(path) as conn:
        keys = dict(conn.execute("SELECT key, COUNT(*) FROM transactions GROUP BY key"))
        assert conn.execute("SELECT COUNT(*) FROM payments").fetchone()[0] == n
    assert len(keys) == n and set(keys.values()) == {1}
    assert verify(path).ok


def _pay(ref: str) -> txs.Transaction:
    return txs.payment_in("acme", 1_000, ref, T0, "USD")


async def _commit_then_kill(ledger: Ledger, refs: list[str]) -> None:
    """Have the write process commit `refs` behind the writer's back, then SIGKILL it: what
    the writer sees when a process dies after COMMIT and before its answer."""
    from ledger.writer import prepare

    writer = ledger._writer
    sink = writer._sink
    wires = [[prepare(_pay(ref))] for ref in refs]
    await sink.request("group", writer._seq, writer._hash_hex, wires, None)
    os.kill(sink.pid, signal.SIGKILL)
    while pid_alive(sink.pid) and sink._proc.returncode is None:
        await asyncio.sleep(0.01)


def test_a_group_committed_by_a_process_killed_before_answering_is_answered_new(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"

    async def body() -> list[Receipt]:
        ledger = await Ledger.open(path, batch_max=100, batch_ms=50)
        try:
            await ledger.submit(_pay("first"))
            await _commit_then_kill(ledger, ["x", "y"])
            futs = [ledger.submit_nowait(_pay(ref)) for ref in ("first", "x", "x", "y", "z")]
            receipts = list(await asyncio.gather(*futs))
            assert ledger.balances.get("USD", "customer:acme") == 4_000
            assert await ledger.head() == (4, receipts[-1].hash)
            return receipts
        finally:
            await ledger.close()

    receipts = asyncio.run(body())
    assert [(r.key, r.seq, r.existed) for r in receipts] == [
        ("pay:first", 1, True),
        ("pay:x", 2, False),  # committed before the death: the lost answer said new
        ("pay:x", 2, True),
        ("pay:y", 3, False),
        ("pay:z", 4, False),  # not in the file: written by the new process
    ]
    assert verify(path).ok


def test_a_file_moved_past_what_the_group_explains_stops_that_group(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def body() -> BaseException | Receipt:
        ledger = await Ledger.open(path, batch_max=100, batch_ms=50)
        try:
            await _commit_then_kill(ledger, ["x", "stranger"])
            result = await asyncio.gather(ledger.submit_nowait(_pay("x")), return_exceptions=True)
            return result[0]
        finally:
            await ledger.close()

    result = asyncio.run(body())
    assert isinstance(result, LedgerWriteFailed) and "does not explain" in str(result)


def test_a_group_whose_commit_cannot_be_learnt_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telling callers "not written" when it may be false would make their retries look like
    duplicates whose balances were never counted: the writer stops instead (restart)."""
    import ledger.writer as writer_module
    from ledger.sinkclient import WriteProcess

    async def no_process(*args: object, **kwargs: object) -> WriteProcess:
        raise LedgerError("another process is writing this ledger")

    async def body() -> BaseException | Receipt:
        ledger = await Ledger.open(tmp_path / "l.db", batch_max=100, batch_ms=50)
        try:
            await _commit_then_kill(ledger, ["x"])
            monkeypatch.setattr(writer_module, "RESTARTS_PER_GROUP", 2)
            monkeypatch.setattr(writer_module, "RESTART_PAUSE_S", 0.0)
            monkeypatch.setattr(WriteProcess, "start", no_process)
            result = await asyncio.gather(ledger.submit_nowait(_pay("x")), return_exceptions=True)
            return result[0]
        finally:
            with pytest.raises(LedgerWriteFailed, match="commit is unknown"):
                await ledger.close()

    result = asyncio.run(body())
    assert isinstance(result, LedgerWriteFailed)
    assert "writer stopped" in str(result) and "whose commit is unknown" in str(result)
