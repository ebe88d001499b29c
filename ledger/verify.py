"""`vmgatectl ledger verify`: prove the file is the ledger the writer wrote.

From genesis, in seq order, inside one read snapshot: seqs are contiguous; each transaction's
content (its row, postings, call and payment rows) hashes to its stored digest; its prev_hash
is the previous hash; its hash is the chain link; its postings are non-zero and sum to zero;
it carries the rows its kind needs and no stray ones. Balances are recomputed from scratch
and compared with every checkpoint, and the plan-lock table with the call history. The first
thing wrong stops the walk and is reported with its seq: after one bad link nothing later can
be trusted anyway.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ledger.codec import (
    CALL_FIELDS,
    GENESIS_HASH,
    LEG_FIELDS,
    PARTY_ORDER,
    PAYMENT_FIELDS,
    canonical,
    chain_hash,
)
from ledger.errors import LedgerError
from ledger.model import TxKind
from ledger.reports import snapshot

_KINDS = frozenset(k.value for k in TxKind)
_PAYMENTS = frozenset({TxKind.PAYMENT_IN, TxKind.CLIENT_PAYOUT, TxKind.RESELLER_PAYOUT})
_LEG_BASE = len(CALL_FIELDS) - len(LEG_FIELDS) * len(PARTY_ORDER)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What verify found; `ok` is False when `problem` names the first bad seq."""

    ok: bool
    transactions: int
    postings: int
    checkpoints: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        """One line for the operator."""
        if self.ok:
            return (
                f"ledger OK: {self.transactions} transactions, {self.postings} postings, "
                f"{self.checkpoints} checkpoints; head seq {self.head_seq} {self.head_hash}"
            )
        return f"ledger BROKEN at seq {self.first_bad_seq}: {self.problem}"


class _Bad(LedgerError):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


class _Children:
    """Rows of a child table (ordered by seq) handed out per transaction seq."""

    def __init__(self, name: str, rows: Iterator[Any]) -> None:
        self._name = name
        self._rows = rows
        self._next: Any = next(rows, None)

    def take(self, seq: int) -> list[Any]:
        out: list[Any] = []
        while self._next is not None and self._next[0] <= seq:
            if self._next[0] < seq:
                raise _Bad(
                    self._next[0], f"{self._name} row for seq {self._next[0]} has no transaction"
                )
            out.append(self._next)
            self._next = next(self._rows, None)
        return out

    def leftover(self) -> Any:
        return self._next


Progress = Callable[[int, int], None]
PROGRESS_EVERY = 10_000
"""Transactions between two calls of verify's `progress(done, total)`."""


def verify(path: str | os.PathLike[str], progress: Progress | None = None) -> VerifyReport:
    """Walk the whole chain of the ledger at `path` (read-only) and report the first fault.

    `progress(done, total)` is called every PROGRESS_EVERY transactions and at the end of a
    good walk (total: the head seq of the snapshot).
    """
    with snapshot(path) as conn:
        return _walk(conn, progress)


def _walk(conn: sqlite3.Connection, progress: Progress | None = None) -> VerifyReport:
    counts: dict[str, Any] = {"tx": 0, "postings": 0, "checkpoints": 0}
    try:
        _walk_chain(conn, counts, progress)
    except _Bad as bad:
        return VerifyReport(
            False,
            counts["tx"],
            counts["postings"],
            counts["checkpoints"],
            int(counts.get("head_seq", 0)),
            str(counts.get("head_hash", GENESIS_HASH)),
            bad.seq,
            bad.problem,
        )
    return VerifyReport(
        True,
        counts["tx"],
        counts["postings"],
        counts["checkpoints"],
        int(counts.get("head_seq", 0)),
        str(counts.get("head_hash", GENESIS_HASH)),
    )


def _walk_chain(
    conn: sqlite3.Connection, counts: dict[str, Any], progress: Progress | None
) -> None:
    prev_hex, last_seq = GENESIS_HASH, 0
    head = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions").fetchone()[0])
    postings = _Children(
        "postings", conn.execute("SELECT seq, idx, account, amount FROM postings ORDER BY seq, idx")
    )
    calls = _Children(
        "calls", conn.execute(f"SELECT seq, {', '.join(CALL_FIELDS)} FROM calls ORDER BY seq")
    )
    pays = _Children(
        "payments",
        conn.execute(f"SELECT seq, {', '.join(PAYMENT_FIELDS)} FROM payments ORDER BY seq"),
    )
    marks = conn.execute("SELECT seq, hash, accounts FROM checkpoint_marks ORDER BY seq").fetchall()
    mark_at = {int(m[0]): m for m in marks}
    balances: dict[tuple[str, str], int] = {}
    rates: set[tuple[Any, Any, Any]] = set()
    txs = conn.execute(
        "SELECT seq, key, kind, currency, created, reason, digest, prev_hash, hash "
        "FROM transactions ORDER BY seq"
    )
    for seq, key, kind, currency, created, reason, digest, prev_hash, link in txs:
        if seq != last_seq + 1:
            raise _Bad(seq, f"seq {last_seq + 1} is missing (found {seq} after {last_seq})")
        p_rows = postings.take(seq)
        c_rows = calls.take(seq)
        y_rows = pays.take(seq)
        if kind not in _KINDS:
            raise _Bad(seq, f"kind {kind!r} is not a transaction kind")
        total = 0
        for i, (_, idx, account, amount) in enumerate(p_rows):
            if idx != i:
                raise _Bad(seq, f"postings idx {idx} where {i} was expected")
            if amount == 0:
                raise _Bad(seq, f"posting {i} ({account}) has a zero amount")
            total += amount
            bkey = (currency, account)
            balances[bkey] = balances.get(bkey, 0) + amount
        if total != 0:
            raise _Bad(seq, f"postings sum to {total} micro-units, not 0")
        _check_shape(seq, TxKind(kind), len(p_rows), len(c_rows), len(y_rows))
        crow = tuple(c_rows[0][1:]) if c_rows else None
        prow = tuple(y_rows[0][1:]) if y_rows else None
        if crow is not None and kind == TxKind.CALL:
            for i in range(len(PARTY_ORDER)):
                base = _LEG_BASE + len(LEG_FIELDS) * i
                rate = (crow[base], crow[base + 2], crow[base + 8])
                if crow[base + 1] is None and None not in rate:
                    rates.add(rate)
        body = canonical(key, kind, currency, reason, [(p[2], p[3]) for p in p_rows], crow, prow)
        real = hashlib.sha256(body).digest()
        if real.hex() != digest:
            raise _Bad(seq, f"content of {key!r} does not match its digest: a field was edited")
        if prev_hash != prev_hex:
            raise _Bad(seq, f"prev_hash {prev_hash} is not the hash of seq {last_seq}")
        if chain_hash(bytes.fromhex(prev_hex), seq, created, real).hex() != link:
            raise _Bad(seq, f"hash of {key!r} does not match its chain link")
        if seq in mark_at:
            _check_checkpoint(conn, mark_at[seq], link, balances)
            counts["checkpoints"] += 1
        counts["tx"] += 1
        counts["postings"] += len(p_rows)
        counts["head_seq"], counts["head_hash"] = seq, link
        prev_hex, last_seq = link, seq
        if progress is not None and seq % PROGRESS_EVERY == 0:
            progress(seq, head)
    for table in (postings, calls, pays):
        row = table.leftover()
        if row is not None:
            raise _Bad(row[0], f"a row for seq {row[0]} exists past the last transaction")
    for mark in marks:
        if mark[0] > last_seq:
            raise _Bad(mark[0], f"checkpoint at seq {mark[0]} is past the last transaction")
    for plan, prefix, since, seq in conn.execute(
        "SELECT plan, prefix, valid_since, seq FROM used_rates ORDER BY seq"
    ):
        if (plan, prefix, since) not in rates:
            raise _Bad(seq, f"used_rates ({plan}, {prefix}, {since}) priced no call")
        rates.discard((plan, prefix, since))
    if rates:
        plan, prefix, since = sorted(rates, key=repr)[0]
        raise _Bad(
            last_seq,
            f"rate row ({plan}, {prefix}, {since}) priced a call but is missing from used_rates",
        )
    if progress is not None:
        progress(last_seq, head)


def _check_shape(seq: int, kind: TxKind, postings: int, calls: int, pays: int) -> None:
    if kind is TxKind.CALL:
        wanted = (1, 0)
    elif kind in _PAYMENTS:
        wanted = (0, 1)
    else:
        wanted = (0, 0)
    if (calls, pays) != wanted:
        raise _Bad(
            seq,
            f"a {kind.value} has {calls} call and {pays} payment rows, "
            f"expected {wanted[0]} and {wanted[1]}",
        )
    if postings == 0 and kind not in (TxKind.CALL, TxKind.REVERSAL):
        raise _Bad(seq, f"a {kind.value} has no postings")


def _check_checkpoint(
    conn: sqlite3.Connection, mark: Any, link: str, balances: dict[tuple[str, str], int]
) -> None:
    seq, mark_hash, accounts = mark
    if mark_hash != link:
        raise _Bad(seq, f"checkpoint at seq {seq} records hash {mark_hash}, the chain has {link}")
    saved = {
        (cur, acc): bal
        for cur, acc, bal in conn.execute(
            "SELECT currency, account, balance FROM checkpoints WHERE seq = ?", (seq,)
        )
    }
    if len(saved) != accounts:
        raise _Bad(seq, f"checkpoint at seq {seq} has {len(saved)} accounts, its mark {accounts}")
    for key in sorted(set(saved) | set(balances)):
        have, want = saved.get(key, 0), balances.get(key, 0)
        if have != want:
            raise _Bad(
                seq,
                f"checkpoint at seq {seq}: {key[1]} ({key[0]}) is {have}, the postings give {want}",
            )
