"""The single writer task: a bounded queue in, group commits out.

Callers hand transactions over with `submit_nowait` (on the event loop thread). The rules are
checked and the canonical encoding made right there, so a bad transaction fails its caller at
once and never reaches SQLite. The writer task then takes up to `batch_max` queued
transactions (waiting at most `batch_ms` for a group to fill), and for the whole group:
BEGIN IMMEDIATE, one lookup of every key already in the file, seq and hash assignment in
memory, one `executemany` per table, one COMMIT (fsync, `synchronous=FULL`). Only then are the
callers' futures resolved, the balance projection updated and the commit hook called; an
acknowledged transaction is therefore on disk.

Exactly once: a key already in the file or earlier in the same group with the same content
digest resolves to that transaction's Receipt with `existed=True`; with another digest, to
KeyConflict. Linked units (rerate pairs) are all-or-nothing inside the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosqlite

from ledger.balances import AccountKey, Balances
from ledger.codec import (
    CALL_FIELDS,
    LEG_FIELDS,
    PARTY_ORDER,
    PAYMENT_FIELDS,
    Encoded,
    chain_hash,
    encode,
)
from ledger.errors import (
    InvalidTransaction,
    KeyConflict,
    LedgerClosed,
    LedgerFull,
    LedgerWriteFailed,
)
from ledger.model import Receipt, Transaction
from ledger.transactions import check

log = logging.getLogger(__name__)

CommitHook = Callable[[int, float], None]
RateRow = tuple[str, str, int]

_INSERT_TX = (
    "INSERT INTO transactions (seq, key, kind, currency, created, reason, digest, prev_hash, "
    "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_POSTING = "INSERT INTO postings (seq, idx, account, amount) VALUES (?, ?, ?, ?)"
_INSERT_CALL = (
    f"INSERT INTO calls (seq, {', '.join(CALL_FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(CALL_FIELDS) + 1))})"
)
_INSERT_PAYMENT = (
    f"INSERT INTO payments (seq, {', '.join(PAYMENT_FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(PAYMENT_FIELDS) + 1))})"
)
_INSERT_RATE = "INSERT INTO used_rates (plan, prefix, valid_since, seq) VALUES (?, ?, ?, ?)"
_HEAD = "SELECT seq, hash FROM transactions ORDER BY seq DESC LIMIT 1"
_LOOKUP = (
    "SELECT t.key, t.seq, t.digest, t.hash FROM json_each(?) AS j "
    "JOIN transactions AS t ON t.key = j.value"
)
# Offsets of each party's (plan, unrated, prefix, ..., valid_since) inside a call row.
_LEG_BASE = len(CALL_FIELDS) - len(LEG_FIELDS) * len(PARTY_ORDER)
_RATE_OFFSETS = tuple(
    tuple(
        _LEG_BASE + len(LEG_FIELDS) * i + LEG_FIELDS.index(name)
        for name in ("plan", "unrated", "prefix", "valid_since")
    )
    for i in range(len(PARTY_ORDER))
)


@dataclass(slots=True)
class _Item:
    enc: Encoded
    fut: asyncio.Future[Receipt]


_Unit = list[_Item]
_Known = tuple[int, str, str]  # seq, digest hex, hash hex


@dataclass(slots=True)
class _Plan:
    seq: int
    prev: bytes
    tx_rows: list[tuple[object, ...]] = field(default_factory=list)
    posting_rows: list[tuple[object, ...]] = field(default_factory=list)
    call_rows: list[tuple[object, ...]] = field(default_factory=list)
    payment_rows: list[tuple[object, ...]] = field(default_factory=list)
    rate_rows: list[tuple[object, ...]] = field(default_factory=list)
    new_rates: set[RateRow] = field(default_factory=set)
    deltas: dict[AccountKey, int] = field(default_factory=dict)
    results: list[tuple[asyncio.Future[Receipt], Receipt | BaseException]] = field(
        default_factory=list
    )


WAL_CHECKPOINT_EVERY = 20_000
"""Transactions between WAL checkpoints. They copy the WAL into the main file on a side
thread and connection (PASSIVE: never blocks the writer), so no commit pays for the copy."""


def copy_wal(path: str) -> None:
    """A PASSIVE WAL checkpoint on its own connection (run in a worker thread)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error:
        log.exception("ledger: WAL checkpoint failed (the WAL keeps growing until one works)")


def prepare(tx: Transaction) -> Encoded:
    """Check a transaction's rules and encode it; raises InvalidTransaction/NotZeroSum."""
    check(tx)
    try:
        return encode(tx)
    except (TypeError, UnicodeEncodeError) as exc:
        raise InvalidTransaction(f"transaction {tx.key!r}: {exc}") from exc


class Writer:
    """Owns the write connection; one task commits queued transactions in groups."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        path: str,
        balances: Balances,
        head: tuple[int, bytes],
        used_rates: set[RateRow],
        checkpoint_seq: int,
        batch_max: int,
        batch_ms: float,
        queue_max: int,
        checkpoint_every: int,
    ) -> None:
        """Take over `conn` (already configured) and the state read at open."""
        self._conn = conn
        self._path = path
        self._wal_seq = head[0]
        self._wal_task: asyncio.Task[None] | None = None
        self._balances = balances
        self._seq, self._hash = head
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

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    @property
    def queued(self) -> int:
        """Transactions accepted and not yet committed or failed."""
        return self._queued

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, raw hash) of the last committed transaction."""
        return self._seq, self._hash

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
        """Stop taking work, drain the queue, write a checkpoint, close the connection."""
        if self._closing and self._task is None:
            return
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._wal_task is not None:
            await self._wal_task
        try:
            await self._checkpoint()
            await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._conn.close()

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._queued < self._batch_max and self._batch_s > 0 and not self._closing:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._batch_s)
                await self._commit(self._take())
                if self._seq - self._ckpt_seq >= self._checkpoint_every:
                    await self._checkpoint()
                if self._seq - self._wal_seq >= WAL_CHECKPOINT_EVERY and (
                    self._wal_task is None or self._wal_task.done()
                ):
                    self._wal_seq = self._seq
                    self._wal_task = asyncio.create_task(
                        asyncio.to_thread(copy_wal, self._path), name="ledger-wal-checkpoint"
                    )
        except BaseException as exc:
            # The writer must never die silently: whoever waits learns why.
            self._closing = True
            err = LedgerWriteFailed(f"ledger writer stopped: {exc!r}")
            while self._queue:
                for item in self._queue.popleft():
                    if not item.fut.done():
                        item.fut.set_exception(err)
            self._queued = 0
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("ledger writer stopped")
            raise

    def _take(self) -> list[_Unit]:
        units: list[_Unit] = []
        taken = 0
        while self._queue and (not units or taken + len(self._queue[0]) <= self._batch_max):
            unit = self._queue.popleft()
            units.append(unit)
            taken += len(unit)
        self._queued -= taken
        return units

    async def _commit(self, units: list[_Unit]) -> None:
        started = time.perf_counter()
        conn = self._conn
        size = sum(len(u) for u in units)
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                row = next(iter(await conn.execute_fetchall(_HEAD)), None)
                on_disk = (0, "0" * 64) if row is None else (row[0], row[1])
                if on_disk != (self._seq, self._hash.hex()):
                    raise LedgerWriteFailed(
                        f"the file's head is seq {on_disk[0]}, this writer's is {self._seq}: "
                        "another process wrote to the ledger; stop it and restart vmgated"
                    )
                keys = json.dumps(list({item.enc.tx.key for unit in units for item in unit}))
                known: dict[str, _Known] = {
                    k: (s, d, h) for k, s, d, h in await conn.execute_fetchall(_LOOKUP, (keys,))
                }
                plan = self._plan(units, known)
                if plan.tx_rows:
                    await conn.executemany(_INSERT_TX, plan.tx_rows)
                if plan.posting_rows:
                    await conn.executemany(_INSERT_POSTING, plan.posting_rows)
                if plan.call_rows:
                    await conn.executemany(_INSERT_CALL, plan.call_rows)
                if plan.payment_rows:
                    await conn.executemany(_INSERT_PAYMENT, plan.payment_rows)
                if plan.rate_rows:
                    await conn.executemany(_INSERT_RATE, plan.rate_rows)
                await conn.execute("COMMIT")
            except BaseException:
                try:
                    await conn.execute("ROLLBACK")
                except Exception:
                    log.exception("ledger: ROLLBACK failed after a failed group")
                raise
        except Exception as exc:
            err = (
                exc
                if isinstance(exc, LedgerWriteFailed)
                else LedgerWriteFailed(f"group of {size} transactions not written: {exc!r}")
            )
            for unit in units:
                for item in unit:
                    if not item.fut.done():
                        item.fut.set_exception(err)
            log.error("ledger: %s", err)
            return
        self._seq, self._hash = plan.seq, plan.prev
        self._balances.apply(plan.deltas.items(), plan.seq)
        self.used_rates |= plan.new_rates
        for fut, result in plan.results:
            if fut.done():
                continue  # the caller stopped waiting; the transaction is committed anyway
            if isinstance(result, Receipt):
                fut.set_result(result)
            else:
                fut.set_exception(result)
        hook = self.on_commit
        if hook is not None:
            hook(size, time.perf_counter() - started)

    def _plan(self, units: list[_Unit], known: dict[str, _Known]) -> _Plan:
        """Assign seqs and hashes and build the rows of one group (pure, no I/O)."""
        plan = _Plan(self._seq, self._hash)
        for unit in units:
            seq, prev = plan.seq, plan.prev
            fresh: dict[str, _Known] = {}
            results: list[tuple[asyncio.Future[Receipt], Receipt | BaseException]] = []
            tx_rows: list[tuple[object, ...]] = []
            new: list[tuple[int, Encoded]] = []
            error: KeyConflict | None = None
            for item in unit:
                enc = item.enc
                tx = enc.tx
                hit = known.get(tx.key) or fresh.get(tx.key)
                digest_hex = enc.digest.hex()
                if hit is not None:
                    if hit[1] != digest_hex:
                        error = KeyConflict(tx.key, hit[0])
                        break
                    results.append((item.fut, Receipt(hit[0], tx.key, hit[2], True)))
                    continue
                seq += 1
                link = chain_hash(prev, seq, tx.created, enc.digest)
                link_hex = link.hex()
                tx_rows.append(
                    (
                        seq,
                        tx.key,
                        enc.kind,
                        tx.currency,
                        tx.created,
                        tx.reason,
                        digest_hex,
                        prev.hex(),
                        link_hex,
                    )
                )
                fresh[tx.key] = (seq, digest_hex, link_hex)
                results.append((item.fut, Receipt(seq, tx.key, link_hex, False)))
                new.append((seq, enc))
                prev = link
            if error is not None:
                plan.results.extend((item.fut, error) for item in unit)
                continue
            plan.seq, plan.prev = seq, prev
            known.update(fresh)
            plan.results.extend(results)
            plan.tx_rows.extend(tx_rows)
            self._rows(plan, new)
        return plan

    def _rows(self, plan: _Plan, new: list[tuple[int, Encoded]]) -> None:
        deltas = plan.deltas
        for seq, enc in new:
            currency = enc.tx.currency
            for idx, (acc, amount) in enumerate(enc.postings):
                plan.posting_rows.append((seq, idx, acc, amount))
                key = (currency, acc)
                deltas[key] = deltas.get(key, 0) + amount
            crow = enc.call_row
            if crow is not None:
                plan.call_rows.append((seq, *crow))
                if enc.kind == "call":
                    for plan_i, unrated_i, prefix_i, since_i in _RATE_OFFSETS:
                        rate = (crow[plan_i], crow[prefix_i], crow[since_i])
                        if (
                            crow[unrated_i] is None
                            and None not in rate
                            and rate not in self.used_rates
                            and rate not in plan.new_rates
                        ):
                            plan.new_rates.add(rate)
                            plan.rate_rows.append((*rate, seq))
            if enc.payment_row is not None:
                plan.payment_rows.append((seq, *enc.payment_row))

    async def _checkpoint(self) -> None:
        """Write the balances as of the head (a full copy) so the next open reads the tail only."""
        snap = self._balances.snapshot()
        if snap.seq <= self._ckpt_seq:
            return
        rows = [(snap.seq, cur, acc, bal) for (cur, acc), bal in snap.by_account.items()]
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute(
                    "INSERT INTO checkpoint_marks (seq, hash, created, accounts) "
                    "VALUES (?, ?, ?, ?)",
                    (snap.seq, self._hash.hex(), time.time_ns() // 1000, len(rows)),
                )
                await conn.executemany(
                    "INSERT INTO checkpoints (seq, currency, account, balance) VALUES (?, ?, ?, ?)",
                    rows,
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        except Exception:
            # A missing checkpoint only makes the next open read a longer tail.
            log.exception("ledger: checkpoint at seq %d not written", snap.seq)
            return
        self._ckpt_seq = snap.seq
