"""The single writer task: a bounded queue in, group commits out.

Callers hand transactions over with `submit_nowait` (on the event loop thread). The rules are
checked and the canonical encoding made right there (digest, its hex, the rate rows a call
used: computed once), so a bad transaction fails its caller at once and never reaches SQLite.
The writer task then takes up to `batch_max` queued transactions (waiting at most `batch_ms`
for a group to fill) and plans the group in memory: seqs, chain hashes, every row, the balance
deltas. The group's rows then go to the write process (ledger/sink.py, one pickle per
group), which writes them as one SQLite transaction: BEGIN IMMEDIATE, head check, one lookup
of the group's new keys in the file, multi-row INSERTs, COMMIT (fsync, `synchronous=FULL`).
While it does, on the other core, the loop plans the next group against the predicted head
(the pipeline); if the group in flight fails or meets keys already in the file, the next one
is planned again. Only after the write process answered that COMMIT returned are the callers'
futures resolved, the balance projection updated and the commit hook called; an acknowledged
transaction is on disk.

Exactly once: a key already in the file or earlier in the same group with the same content
digest resolves to that transaction's Receipt with `existed=True`; with another digest, to
KeyConflict. Linked units (rerate pairs) are all-or-nothing inside the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.balances import AccountKey, Balances
from ledger.codec import Encoded, RateRow, chain_hash, encode
from ledger.errors import (
    InvalidTransaction,
    KeyConflict,
    LedgerClosed,
    LedgerFull,
    LedgerWriteFailed,
)
from ledger.model import Receipt, Transaction
from ledger.sinkclient import WriteProcess, WriteProcessDied
from ledger.transactions import check

log = logging.getLogger(__name__)

CommitHook = Callable[[int, float], None]

FAIL_LOG_EVERY = 10.0
"""Seconds between two log messages about failed groups (the rest are counted)."""


@dataclass(slots=True)
class _Item:
    enc: Encoded
    fut: asyncio.Future[Receipt]


_Unit = list[_Item]
_Known = tuple[int, str, str]  # seq, digest hex, hash hex
_Result = tuple[asyncio.Future[Receipt], Receipt | BaseException]


@dataclass(slots=True)
class _Plan:
    """One group's rows, seqs, hashes and outcomes, computed against an assumed head."""

    units: list[_Unit]
    base_seq: int
    base_hash: bytes
    started: float
    seq: int = 0
    prev: bytes = b""
    prev_hex: str = ""
    fresh: dict[str, _Known] = field(default_factory=dict)
    tx_rows: list[tuple[object, ...]] = field(default_factory=list)
    posting_rows: list[tuple[object, ...]] = field(default_factory=list)
    call_rows: list[tuple[object, ...]] = field(default_factory=list)
    payment_rows: list[tuple[object, ...]] = field(default_factory=list)
    rate_rows: list[tuple[object, ...]] = field(default_factory=list)
    new_rates: set[RateRow] = field(default_factory=set)
    deltas: dict[AccountKey, int] = field(default_factory=dict)
    results: list[_Result] = field(default_factory=list)
    planned: float = 0.0  # seconds spent planning
    written: float = 0.0  # seconds from sending the group to the write process's answer
    rates_ahead: set[RateRow] = field(default_factory=set)
    """Rate rows the group written before this one adds (not yet in `used_rates`)."""

    @property
    def size(self) -> int:
        """Transactions in the group."""
        return sum(len(u) for u in self.units)

    def fail(self, err: BaseException) -> None:
        """Fail every caller of the group still waiting."""
        for unit in self.units:
            for item in unit:
                if not item.fut.done():
                    item.fut.set_exception(err)


def prepare(tx: Transaction) -> Encoded:
    """Check a transaction's rules and encode it; raises InvalidTransaction/NotZeroSum."""
    check(tx)
    try:
        return encode(tx)
    except (TypeError, UnicodeEncodeError) as exc:
        raise InvalidTransaction(f"transaction {tx.key!r}: {exc}") from exc


class Writer:
    """Feeds the write process; one task commits queued transactions in groups."""

    def __init__(
        self,
        sink: WriteProcess,
        *,
        path: str,
        wal_checkpoint_every: int,
        balances: Balances,
        head: tuple[int, bytes],
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
        # Two groups at a time: while the write process writes and fsyncs group N, this
        # loop takes and plans group N+1 against N's predicted head. If N's head turns out
        # otherwise (it failed, or met keys already in the file), N+1 is planned again.
        inflight: tuple[_Plan, asyncio.Task[_Plan]] | None = None
        units: list[_Unit] = []  # taken from the queue, not yet in a plan in flight
        try:
            while True:
                if not self._queue:
                    if inflight is not None:
                        await self._finish(*inflight)
                        inflight = None
                        await self._maintain()
                        continue
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._queued < self._batch_max and not self._closing:
                    if inflight is None:
                        if self._batch_s > 0:
                            self._full.clear()
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._full.wait(), self._batch_s)
                    elif not inflight[1].done():
                        # The write in flight is this group's window.
                        self._full.clear()
                        full = asyncio.ensure_future(self._full.wait())
                        await asyncio.wait((full, inflight[1]), return_when=asyncio.FIRST_COMPLETED)
                        full.cancel()
                units = self._take()
                if inflight is None:
                    plan = self._plan(units, self._seq, self._hash, {}, None)
                else:
                    ahead = inflight[0]
                    plan = self._plan(units, ahead.seq, ahead.prev, {}, ahead)
                    await self._finish(*inflight)
                    inflight = None
                    if (plan.base_seq, plan.base_hash) != (self._seq, self._hash):
                        plan = self._plan(units, self._seq, self._hash, {}, None)
                    await self._maintain()
                inflight = (plan, asyncio.create_task(self._write(plan)))
                units = []
        except BaseException as exc:
            # The writer must never die silently: whoever waits learns why.
            self._closing = True
            err = LedgerWriteFailed(f"ledger writer stopped: {exc!r}")
            if inflight is not None:
                inflight[1].cancel()
                inflight[0].fail(err)
            for unit in units:  # taken but never planned: their callers must hear too
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

    async def _write(self, plan: _Plan) -> _Plan:
        """Write `plan`, planning it again with the file's keys if it met any; the plan written.

        The keys met are accumulated across attempts: a replan drops the `ahead` group's
        keys, so a key first resolved through it becomes "new" again and is only found on
        disk by the next lookup. Forgetting the earlier hits would let two such keys take
        turns forever; with the union, every attempt adds at least one key, so there are at
        most as many attempts as the group has keys.
        """
        disk: dict[str, _Known] = {}
        while True:
            started = time.perf_counter()
            hits: dict[str, _Known] | None
            try:
                hits = await self._sink.request(
                    "group",
                    plan.base_seq,
                    plan.base_hash.hex(),
                    list(plan.fresh),
                    plan.tx_rows,
                    plan.posting_rows,
                    plan.call_rows,
                    plan.payment_rows,
                    plan.rate_rows,
                )
            except WriteProcessDied:
                if not await self._committed_before_death(plan):
                    raise
                hits = None
            if hits is None:
                plan.written = time.perf_counter() - started
                return plan
            disk.update(hits)
            plan = self._plan(plan.units, plan.base_seq, plan.base_hash, disk, None)

    async def _committed_before_death(self, plan: _Plan) -> bool:
        """After the write process died with `plan` sent: start another; did `plan` commit?

        The file's head tells, exactly: the plan predicted the seq and chained hash its last
        transaction gets, and only this writer appends. At the plan's head: it committed
        before the death (the answer was lost), and its callers are answered as usual. At the
        plan's base: nothing of it was written; the caller's error says so, and a retry
        (the daemon's backlog) commits it through the new process. Anything else stops the
        writer: the file moved in a way this writer did not plan.
        """
        died = self._sink
        await died.abort()
        self._sink = await WriteProcess.start(self._path, wal_checkpoint_every=self._wal_every)
        seq, head_hex = await self._sink.request("head")
        committed = (seq, head_hex) == (plan.seq, plan.prev_hex)
        if committed or (seq, head_hex) == (plan.base_seq, plan.base_hash.hex()):
            log.warning(
                "ledger: write process %d died with a group of %d in flight (%s); "
                "process %d took over at seq %d",
                died.pid,
                plan.size,
                "committed: its answer was lost" if committed else "not written",
                self._sink.pid,
                seq,
            )
            return committed
        raise LedgerWriteFailed(
            f"after the write process died the file's head is seq {seq}, neither the "
            f"group's base ({plan.base_seq}) nor its end ({plan.seq}); restart vmgated"
        )

    async def _finish(self, plan: _Plan, task: asyncio.Task[_Plan]) -> None:
        """Wait for a group's commit, then move the head and answer its callers."""
        try:
            plan = await task
        except Exception as exc:
            err = (
                exc
                if isinstance(exc, LedgerWriteFailed)
                else LedgerWriteFailed(f"group of {plan.size} transactions not written: {exc!r}")
            )
            plan.fail(err)
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
            return
        if self._failing:
            # Said once, with the failures the pacing held back: they may be all there is.
            more = f" ({self._fail_quiet} failed groups since the last message)"
            log.warning("ledger: writing again%s", more if self._fail_quiet else "")
            self._failing, self._fail_quiet = False, 0
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
            # A group's own work (planning + BEGIN..COMMIT), as before the pipeline; the
            # overlap with the neighbouring group is not counted twice.
            hook(plan.size, plan.planned + plan.written)

    def _plan(
        self,
        units: list[_Unit],
        base_seq: int,
        base_hash: bytes,
        disk: dict[str, _Known],
        ahead: _Plan | None,
    ) -> _Plan:
        """Assign seqs and hashes and build the rows of one group (pure, no I/O).

        `disk`: keys the file is known to hold; `ahead`: the group being written before this
        one (its keys and rate rows count as present: this plan is only used if that group
        commits exactly as planned).
        """
        plan = _Plan(units, base_seq, base_hash, time.perf_counter(), base_seq, base_hash)
        plan.prev_hex = base_hash.hex()
        pending: dict[str, _Known] = {}
        if ahead is not None:
            pending = ahead.fresh
            plan.rates_ahead = ahead.new_rates
        fresh = plan.fresh
        results = plan.results
        for unit in units:
            if len(unit) == 1:
                item = unit[0]
                enc = item.enc
                key = enc.tx.key
                hit = fresh.get(key) or pending.get(key) or disk.get(key)
                if hit is None:
                    self._emit(plan, item)
                elif hit[1] == enc.digest_hex:
                    results.append((item.fut, Receipt(hit[0], key, hit[2], True)))
                else:
                    results.append((item.fut, KeyConflict(key, hit[0])))
                continue
            # A linked unit: resolve every key first, so a conflict writes none of it.
            inside: dict[str, tuple[str, int]] = {}  # new keys of the unit: digest, seq
            hits: list[_Known | None] = []
            error: KeyConflict | None = None
            for item in unit:
                key = item.enc.tx.key
                digest_hex = item.enc.digest_hex
                hit = fresh.get(key) or pending.get(key) or disk.get(key)
                if hit is None and key in inside:
                    if inside[key][0] != digest_hex:
                        error = KeyConflict(key, inside[key][1])
                        break
                    hits.append(None)
                    continue
                if hit is not None and hit[1] != digest_hex:
                    error = KeyConflict(key, hit[0])
                    break
                if hit is None:
                    inside[key] = (digest_hex, plan.seq + len(inside) + 1)
                hits.append(hit)
            if error is not None:
                results.extend((item.fut, error) for item in unit)
                continue
            for item, hit in zip(unit, hits, strict=True):
                key = item.enc.tx.key
                if hit is None and key not in fresh:
                    self._emit(plan, item)
                else:
                    known = hit if hit is not None else fresh[key]
                    results.append((item.fut, Receipt(known[0], key, known[2], True)))
        plan.planned = time.perf_counter() - plan.started
        return plan

    def _emit(self, plan: _Plan, item: _Item) -> None:
        """Append one new transaction to the plan: next seq, chain link, rows, deltas."""
        enc = item.enc
        tx = enc.tx
        key = tx.key
        seq = plan.seq + 1
        link = chain_hash(plan.prev, seq, tx.created, enc.digest)
        link_hex = link.hex()
        currency = tx.currency
        plan.tx_rows.append(
            (
                seq,
                key,
                enc.kind,
                currency,
                tx.created,
                tx.reason,
                enc.digest_hex,
                plan.prev_hex,
                link_hex,
            )
        )
        plan.fresh[key] = (seq, enc.digest_hex, link_hex)
        plan.results.append((item.fut, Receipt(seq, key, link_hex, False)))
        posting_rows = plan.posting_rows
        deltas = plan.deltas
        for idx, (acc, amount) in enumerate(enc.postings):
            posting_rows.append((seq, idx, acc, amount))
            dkey = (currency, acc)
            deltas[dkey] = deltas.get(dkey, 0) + amount
        crow = enc.call_row
        if crow is not None:
            plan.call_rows.append((seq, *crow))
            for rate in enc.rates:
                if (
                    rate not in self.used_rates
                    and rate not in plan.new_rates
                    and rate not in plan.rates_ahead
                ):
                    plan.new_rates.add(rate)
                    plan.rate_rows.append((*rate, seq))
        if enc.payment_row is not None:
            plan.payment_rows.append((seq, *enc.payment_row))
        plan.seq, plan.prev, plan.prev_hex = seq, link, link_hex

    async def _checkpoint(self) -> None:
        """Write the balances as of the head (a full copy) so the next open reads the tail only."""
        snap = self._balances.snapshot()
        if snap.seq <= self._ckpt_seq:
            return
        rows = [(snap.seq, cur, acc, bal) for (cur, acc), bal in snap.by_account.items()]
        try:
            await self._sink.request(
                "checkpoint", snap.seq, self._hash.hex(), time.time_ns() // 1000, rows
            )
        except (sqlite3.Error, OSError) as exc:
            # A missing checkpoint only makes the next open read a longer tail.
            log.error("ledger: checkpoint at seq %d not written: %s", snap.seq, exc)
            return
        except Exception:
            log.exception("ledger: checkpoint at seq %d not written", snap.seq)
            return
        self._ckpt_seq = snap.seq
