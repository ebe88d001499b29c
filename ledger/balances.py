"""Balances: a projection of the postings, per currency and account (Beancount's rule:
balances are derived, never stored as truth).

The live `Balances` is written by the ledger's writer after each durable commit and read by
/metrics from another thread. Every read method takes the same lock as `apply`, so a reader
sees the state after a whole commit, never half of one; the writer holds the lock only to add
a batch's already-summed deltas. The four summary figures are kept as running totals so a
scrape does not walk every account.

The projection is rebuilt at open from the latest checkpoint (a full copy of the balances at
some seq, written every N transactions and at close) plus the postings after it, so opening a
ledger costs one checkpoint read and one aggregate over the tail, whatever its length.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ledger.model import AccountKind

AccountKey = tuple[str, str]  # (currency, account)
_SUMMED = (AccountKind.TENANT, AccountKind.CUSTOMER, AccountKind.CLIENT, AccountKind.RESELLER)


class Summary(NamedTuple):
    """The four figures of SPEC §6, in micro-units of one currency."""

    my_balance: int
    customer_total: int
    owed_to_vmgateclients: int
    owed_to_resellers: int


class AccountBalance(NamedTuple):
    """One account's balance: kind (`customer`...), id (`""` for tenant/external), micro-units."""

    kind: str
    id: str
    balance: int


def split_account(name: str) -> tuple[str, str]:
    """`customer:acme` → (`customer`, `acme`); `tenant` → (`tenant`, ``)."""
    kind, _, ident = name.partition(":")
    return kind, ident


def _summary(totals: Mapping[tuple[str, str], int], currency: str) -> Summary:
    return Summary(
        totals.get((currency, AccountKind.TENANT.value), 0),
        totals.get((currency, AccountKind.CUSTOMER.value), 0),
        totals.get((currency, AccountKind.CLIENT.value), 0),
        totals.get((currency, AccountKind.RESELLER.value), 0),
    )


def _accounts(by_account: Mapping[AccountKey, int], currency: str) -> list[AccountBalance]:
    out = [
        AccountBalance(*split_account(acc), bal)
        for (cur, acc), bal in by_account.items()
        if cur == currency
    ]
    out.sort(key=lambda a: (a.kind, a.id))
    return out


class BalanceSnapshot(NamedTuple):
    """An immutable copy of the projection as of transaction `seq`."""

    seq: int
    by_account: Mapping[AccountKey, int]

    def summary(self, currency: str) -> Summary:
        """The four summary figures of `currency`."""
        totals: dict[tuple[str, str], int] = {}
        for (cur, acc), bal in self.by_account.items():
            kind = split_account(acc)[0]
            totals[(cur, kind)] = totals.get((cur, kind), 0) + bal
        return _summary(totals, currency)

    def accounts(self, currency: str) -> list[AccountBalance]:
        """Every account of `currency`, sorted by kind then id."""
        return _accounts(self.by_account, currency)


class Balances:
    """The live balance projection; thread-safe reads, one writer."""

    def __init__(self, initial: Mapping[AccountKey, int] | None = None, seq: int = 0) -> None:
        """Start from `initial` balances as of transaction `seq`."""
        self._lock = threading.Lock()
        self._by_account: dict[AccountKey, int] = {}
        self._totals: dict[tuple[str, str], int] = {}
        self._seq = 0
        self.apply((initial or {}).items(), seq)

    def apply(self, deltas: Iterable[tuple[AccountKey, int]], seq: int) -> None:
        """Add one commit's summed deltas and move to `seq` (writer only)."""
        with self._lock:
            by_account, totals = self._by_account, self._totals
            for key, delta in deltas:
                by_account[key] = by_account.get(key, 0) + delta
                kind = split_account(key[1])[0]
                tkey = (key[0], kind)
                totals[tkey] = totals.get(tkey, 0) + delta
            self._seq = seq

    @property
    def seq(self) -> int:
        """The last transaction included."""
        with self._lock:
            return self._seq

    def get(self, currency: str, account: str) -> int:
        """One account's balance (0 for an account never posted to)."""
        with self._lock:
            return self._by_account.get((currency, account), 0)

    def currencies(self) -> list[str]:
        """Every currency with at least one posting, sorted."""
        with self._lock:
            return sorted({cur for cur, _ in self._by_account})

    def summary(self, currency: str) -> Summary:
        """My Balance, Customer Total, Owed to VMGateClients, Owed to Resellers."""
        with self._lock:
            return _summary(self._totals, currency)

    def accounts(self, currency: str) -> list[AccountBalance]:
        """Every account of `currency` with its balance, sorted by kind then id."""
        with self._lock:
            return _accounts(self._by_account, currency)

    def snapshot(self) -> BalanceSnapshot:
        """A consistent immutable copy (summary and accounts from the same commit)."""
        with self._lock:
            return BalanceSnapshot(self._seq, dict(self._by_account))


def latest_checkpoint(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(seq, hash) of the newest checkpoint, or None when there is none yet."""
    row = conn.execute(
        "SELECT seq, hash FROM checkpoint_marks ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def load(conn: sqlite3.Connection) -> tuple[dict[AccountKey, int], int]:
    """Balances (and the seq they are as of) from the latest checkpoint plus the tail."""
    mark = latest_checkpoint(conn)
    since = 0 if mark is None else mark[0]
    balances: dict[AccountKey, int] = {}
    if mark is not None:
        for cur, acc, bal in conn.execute(
            "SELECT currency, account, balance FROM checkpoints WHERE seq = ?", (since,)
        ):
            balances[(cur, acc)] = bal
    for cur, acc, delta in conn.execute(
        "SELECT t.currency, p.account, SUM(p.amount) FROM postings p "
        "JOIN transactions t ON t.seq = p.seq WHERE p.seq > ? GROUP BY 1, 2",
        (since,),
    ):
        balances[(cur, acc)] = balances.get((cur, acc), 0) + delta
    head = conn.execute("SELECT MAX(seq) FROM transactions").fetchone()[0]
    return balances, int(head or 0)
