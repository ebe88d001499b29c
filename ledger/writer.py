"""The single writer task: a bounded queue in, group commits out.

Callers hand transactions over with `submit_nowait` (on the event loop thread). The rules are
checked and the rows made right there (`prepare`: `check`, then the posting, call and payment
rows with their column types checked), so a transaction that breaks a rule fails its caller
at once and never reaches SQLite. The writer task takes up to `batch_max` queued transactions
(a group leaves when full or `batch_ms` after the one before it) and sends them to the write
process (ledger/sink.py, one pickle per group), which plans the group against the file's head
— content digests, seqs, chain hashes, rows, the lookup of keys already in the file
(ledger/planner.py) — and writes it as one SQLite transaction: BEGIN IMMEDIATE, head check,
lookup, multi-row INSERTs, COMMIT (fsync, `synchronous=FULL`). The planning used to be done
here, on the event loop; in the write process it runs on the other core (bench/e2e.py,
2026-11-24). While a group is written, the loop goes on taking packets and queueing calls;
the next group leaves once that answer is in and the group is full or `batch_ms` have passed
since the last one left. Only after the write process answered that
COMMIT returned are the callers' futures resolved, the balance projection updated and the
commit hook called; an acknowledged transaction is on disk.

Exactly once: a key already in the file or earlier in the same group with the same content
digest resolves to that transaction's Receipt with `existed=True`; with another digest, to
KeyConflict. Linked units (rerate pairs) are all-or-nothing inside the group. Content that
cannot be encoded (text with lone surrogates) fails its caller with InvalidTransaction from
the write process, without failing the rest of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ledger.balances import AccountKey, Balances
from ledger.codec import RateRow, wire_rows
from ledger.errors import (
    InvalidTransaction,
    KeyConflict,
    LedgerClosed,
    LedgerError,
    LedgerFull,
    LedgerWriteFailed,
)
from ledger.model import Receipt, Transaction
from ledger.planner import CONFLICT, EXISTED, NEW, Wire, Written
from ledger.sinkclient import WriteProcess, WriteProcessDied
from ledger.transactions import check

log = logging.getLogger(__name__)

CommitHook = Callable[[int, float], None]

FAIL_LOG_EVERY = 10.0
"""Seconds between two log messages about failed groups (the rest are counted)."""

RESTARTS_PER_GROUP = 10
"""Write processes started in a row for a group whose process died, before the writer stops."""
RESTART_PAUSE_S = 0.1
"""Pause after a write process could not be started, before the next try."""


@dataclass(slots=True)
class _Item:
    wire: Wire
    fut: asyncio.Future[Receipt]


_Unit = list[_Item]


def prepare(tx: Transaction) -> Wire:
    """Check a transaction's rules and build what the write process needs of it.

    Raises InvalidTransaction/NotZeroSum for a broken rule or a field of the wrong type,
    ValueError for a leg of no known party.
    """
    check(tx)
    try:
        kind, postings, crow, prow = wire_rows(tx)
    except TypeError as exc:
        raise InvalidTransaction(f"transaction {tx.key!r}: {exc}") from exc
    return (tx.key, kind, tx.currency, tx.created, tx.reason, postings, crow, prow)


class Writer:
    """Feeds the write process; one task commits queued transactions in groups."""

    def __init__(
        self,
        sink: WriteProcess,
        *,
        path: str,
        wal_checkpoint_every: int,
        balances: Balances,
        head: tuple[int, str],
        used_rates: set[RateRow],
        checkpoint_seq: int,
        batch_max: int,
        batch_ms: float,
        queue_max: int,
        checkpoint_every: int,
    ) -> None:
        """Take over `sink` (the started write process) and the state read at open."""
        self._sink = sink
        self._path = path
        self._wal_every = wal_checkpoint_every
        self._balances = balances
        self._seq, self._hash_hex = head
        self.used_rates = used_rates
        self._ckpt_seq = checkpoint_seq
        self._batch_max = batch_max
        self._batch_s = batch_ms / 1000.0
        self._queue_max = queue_max
        self._checkpoint_every = checkpoint_every
        self._queue: deque[_Unit] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.on_commit: CommitHook | None = None
        self._fail_logged = -FAIL_LOG_EVERY  # monotonic time of the last failure logged
        self._fail_quiet = 0  # failures not logged since
        self._failing = False  # the last group written failed

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    @property
    def queued(self) -> int:
        """Transactions accepted and not yet committed or failed."""
        return self._queued

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash hex) of the last committed transaction."""
        return self._seq, self._hash_hex

    def _admit(self, count: int) -> None:
        if self._closing:
            raise LedgerClosed("the ledger is closing; no new transactions are taken")
        if self._queued + count > self._queue_max:
            raise LedgerFull(
                f"ledger queue is full ({self._queued} of {self._queue_max} transactions "
                "waiting); retry after the writer catches up"
            )

    def _enqueue(self, unit: _Unit) -> None:
        self._queue.append(unit)
        self._queued += len(unit)
        self._wake.set()
        if self._queued >= self._batch_max:
            self._full.set()

    def submit_nowait(self, tx: Transaction) -> asyncio.Future[Receipt]:
        """Queue one transaction; the future resolves at its durable commit."""
        self._admit(1)
        item = _Item(prepare(tx), asyncio.get_running_loop().create_future())
        self._enqueue([item])
        return item.fut

    def submit_linked(self, txs: list[Transaction]) -> list[asyncio.Future[Receipt]]:
        """Queue transactions that commit together or not at all."""
        if not txs:
            return []
        self._admit(len(txs))
        loop = asyncio.get_running_loop()
        unit = [_Item(prepare(tx), loop.create_future()) for tx in txs]
        self._enqueue(unit)
        return [item.fut for item in unit]

    async def close(self) -> None:
        """Stop taking work, drain the queue, write a checkpoint, end the write process."""
        if self._closing and self._task is None:
            return
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self._checkpoint()
        finally:
            await self._sink.close()  # it folds the WAL into the file, then exits

    async def _run(self) -> None:
        # One group at a time: while the write process plans, writes and fsyncs it, the loop
        # goes on queueing. A group leaves when it is full, or batch_ms after the one before
        # it left (after an idle spell, batch_ms after the first transaction came): sending
        # each time an answer came in made 3.7x as many groups at 60,000 HEP packets/s, each
        # a round of pickling, pipe writes, wake-ups and callbacks on the loop (~1 µs per
        # packet in all; bench/README.md).
        units: list[_Unit] = []  # taken from the queue, not yet answered
        last_sent = -self._batch_s
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    last_sent = max(last_sent, time.monotonic())
                    continue
                window = last_sent + self._batch_s - time.monotonic()
                if window > 0 and self._queued < self._batch_max and not self._closing:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), window)
                units = self._take()
                last_sent = time.monotonic()
                await self._write(units)
                units = []
                await self._maintain()
        except BaseException as exc:
            # The writer must never die silently: whoever waits learns why.
            self._closing = True
            err = LedgerWriteFailed(f"ledger writer stopped: {exc!r}")
            for unit in units:  # taken but never answered: their callers must hear too
                for item in unit:
                    if not item.fut.done():
                        item.fut.set_exception(err)
            while self._queue:
                for item in self._queue.popleft():
                    if not item.fut.done():
                        item.fut.set_exception(err)
            self._queued = 0
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("ledger writer stopped")
            raise

    async def _maintain(self) -> None:
        """Balance checkpoint when due (between groups, none in flight).

        The WAL's copy and rewind are the write process's own (ledger/wal.py).
        """
        if self._seq - self._ckpt_seq >= self._checkpoint_every:
            await self._checkpoint()

    def _take(self) -> list[_Unit]:
        units: list[_Unit] = []
        taken = 0
        while self._queue and (not units or taken + len(self._queue[0]) <= self._batch_max):
            unit = self._queue.popleft()
            units.append(unit)
            taken += len(unit)
        self._queued -= taken
        return units

    async def _write(self, units: list[_Unit]) -> None:
        """Have the write process plan and commit one group, then answer its callers."""
        wires = [[item.wire for item in unit] for unit in units]
        started = time.perf_counter()
        done: Written | Exception | None
        try:
            done = await self._sink.request("group", self._seq, self._hash_hex, wires, None)
        except WriteProcessDied:
            done = None
        except Exception as exc:
            done = exc  # refused whole (SQLite error, another writer): nothing written
        if done is None:
            done = await self._after_death(wires)
        if isinstance(done, Exception):
            self._failed(units, done)
            return
        self._commit(units, done, time.perf_counter() - started)

    async def _after_death(self, wires: list[list[Wire]]) -> Written | Exception:
        """The write process died with this group sent: start another and send it again.

        Whether the group committed before the death is in the file: its head is either the
        one this writer last heard of (nothing of the group written: it is written now) or
        past it, by exactly the group's new transactions (its answer was lost: the new
        process finds every key and, told `new_since`, answers as the lost reply would have).
        Returns that answer, or the error for the callers of a group known not to be written
        (or whose file moved in a way this writer did not send).

        Raises LedgerWriteFailed, which stops the writer, when RESTARTS_PER_GROUP processes in
        a row die or cannot start before the group's fate is known: telling its callers "not
        written" could be false, and their retries would then be taken for duplicates whose
        balances were never counted.
        """
        size = sum(map(len, wires))
        committed = False
        for _ in range(RESTARTS_PER_GROUP):
            died = self._sink
            await died.abort()
            try:
                self._sink = await WriteProcess.start(
                    self._path, wal_checkpoint_every=self._wal_every
                )
                seq, head_hex = await self._sink.request("head")
            except (LedgerError, sqlite3.Error, OSError) as exc:
                log.warning("ledger: no write process after process %d died: %s", died.pid, exc)
                await asyncio.sleep(RESTART_PAUSE_S)
                continue
            committed = (seq, head_hex) != (self._seq, self._hash_hex)
            log.warning(
                "ledger: write process %d died with a group of %d in flight (%s); "
                "process %d took over at seq %d",
                died.pid,
                size,
                "it was committed: its answer was lost" if committed else "not written",
                self._sink.pid,
                seq,
            )
            if committed and seq < self._seq:
                return self._unexplained(seq)
            try:
                done: Written = await self._sink.request(
                    "group", seq, head_hex, wires, self._seq if committed else None
                )
            except WriteProcessDied:
                continue  # its fate is unknown again: the next process reads the file
            except Exception as exc:
                if committed:
                    continue  # written, but the answer is still to be had
                return exc
            new = sum(1 for code, _, _ in done[2] if code == NEW)
            if done[0] != self._seq + new:
                return self._unexplained(done[0])
            return done
        raise LedgerWriteFailed(
            f"{RESTARTS_PER_GROUP} write processes in a row died or could not start with a "
            f"group of {size} transactions in flight, whose commit is unknown"
            f"{' (the file moved: it was)' if committed else ''}; restart vmgated"
        )

    def _unexplained(self, seq: int) -> LedgerWriteFailed:
        return LedgerWriteFailed(
            f"after the write process died the file's head is seq {seq}, which the group in "
            f"flight does not explain (this writer's head was {self._seq}); restart vmgated"
        )

    def _failed(self, units: list[_Unit], exc: Exception) -> None:
        """Fail every caller of a group that was not written; say so, paced."""
        size = sum(map(len, units))
        err = (
            exc
            if isinstance(exc, LedgerWriteFailed)
            else LedgerWriteFailed(f"group of {size} transactions not written: {exc!r}")
        )
        for unit in units:
            for item in unit:
                if not item.fut.done():
                    item.fut.set_exception(err)
        # A full disk fails every retry (the daemon retries each second): one message
        # per FAIL_LOG_EVERY seconds, with how many were held back.
        now = time.monotonic()
        if now - self._fail_logged >= FAIL_LOG_EVERY:
            more = f" ({self._fail_quiet} more failed groups since the last message)"
            log.error("ledger: %s%s", err, more if self._fail_quiet else "")
            self._fail_logged, self._fail_quiet = now, 0
        else:
            self._fail_quiet += 1
        self._failing = True

    def _commit(
        self,
        units: list[_Unit],
        done: Written,
        seconds: float,
    ) -> None:
        """A group is durable: move the head, the balances and used rates; answer callers."""
        if self._failing:
            # Said once, with the failures the pacing held back: they may be all there is.
            more = f" ({self._fail_quiet} failed groups since the last message)"
            log.warning("ledger: writing again%s", more if self._fail_quiet else "")
            self._failing, self._fail_quiet = False, 0
        seq, head_hex, results, new_rates = done
        # Answered as it goes: a future's callbacks run only after this method returns, by
        # when the head, balances and used rates below are already moved.
        deltas: dict[AccountKey, int] = {}
        outcomes = iter(results)
        for unit in units:
            for item in unit:
                code, at, text = next(outcomes)
                fut, wire = item.fut, item.wire
                if code == NEW:
                    currency = wire[2]
                    for acc, amount in wire[5]:
                        dkey = (currency, acc)
                        deltas[dkey] = deltas.get(dkey, 0) + amount
                if fut.done():
                    continue  # the caller stopped waiting; the outcome stands anyway
                if code in (NEW, EXISTED):
                    fut.set_result(Receipt(at, wire[0], text, code == EXISTED))
                elif code == CONFLICT:
                    fut.set_exception(KeyConflict(wire[0], at))
                else:
                    fut.set_exception(InvalidTransaction(text))
        self._seq, self._hash_hex = seq, head_hex
        self._balances.apply(deltas.items(), seq)
        self.used_rates.update(new_rates)
        hook = self.on_commit
        if hook is not None:
            hook(sum(map(len, units)), seconds)

    async def _checkpoint(self) -> None:
        """Write the balances as of the head (a full copy) so the next open reads the tail only."""
        snap = self._balances.snapshot()
        if snap.seq <= self._ckpt_seq:
            return
        rows = [(snap.seq, cur, acc, bal) for (cur, acc), bal in snap.by_account.items()]
        try:
            await self._sink.request(
                "checkpoint", snap.seq, self._hash_hex, time.time_ns() // 1000, rows
            )
        except (sqlite3.Error, OSError) as exc:
            # A missing checkpoint only makes the next open read a longer tail.
            log.error("ledger: checkpoint at seq %d not written: %s", snap.seq, exc)
            return
        except Exception:
            log.exception("ledger: checkpoint at seq %d not written", snap.seq)
            return
        self._ckpt_seq = snap.seq
