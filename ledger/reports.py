"""Read-only queries for `vmgatectl` and the daemon: calls, payments, balances, head.

Every function opens its own `file:...?mode=ro` connection and reads inside one transaction,
so it sees one consistent snapshot and is safe while the daemon writes (WAL readers never
block the writer and are never blocked by it). Nothing here can write: the connection is
read-only at the SQLite level.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from ledger.balances import AccountBalance, Balances, Summary, load
from ledger.codec import CALL_FIELDS, GENESIS_HASH, call_from_row
from ledger.model import CallEntry
from rating.units import EpochUs

_COLUMNS = ", ".join(f"c.{name}" for name in CALL_FIELDS)
_LATEST = "NOT EXISTS (SELECT 1 FROM calls AS n WHERE n.call_uid = c.call_uid AND n.seq > c.seq)"
_UNRATED = "(c.c_unrated IS NOT NULL OR c.v_unrated IS NOT NULL OR c.r_unrated IS NOT NULL)"


class PaymentRecord(NamedTuple):
    """One line of `vmgatectl payments`: money in from a Customer or out to a client/reseller."""

    date: EpochUs
    direction: str  # IN | OUT
    target_type: str  # Customer | VMGateClient | Reseller
    target: str
    amount: int  # micro-units, positive
    reference: str


class _Immutable(sqlite3.Connection):
    """A read-only connection to a ledger no daemon has open (see `connect_ro`)."""


def connect_ro(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection (autocommit mode: callers BEGIN for a snapshot).

    A WAL reader needs the WAL index (`-shm`) beside the file, and creates it when it is
    missing. A stopped daemon leaves neither (its close checkpoints the WAL into the file and
    removes both), so a billing clerk in the daemon's group — the state directory 0750, no
    write access — could not read anything while vmgated was down ("attempt to write a
    readonly database"). Then the file alone is the whole ledger, and it is opened
    `immutable` (no index, no locks); `snapshot` checks afterwards that no daemon started
    meanwhile. A WAL left behind (a crash) cannot be read that way: the error says so.
    """
    file = Path(path)
    try:
        found = file.exists()
    except PermissionError as exc:  # a directory on the way this user may not enter
        raise sqlite3.OperationalError(f"{file}: {exc.strerror}") from exc
    if not found:
        raise FileNotFoundError(f"{file}: no ledger here (is state_dir right?)")
    if not os.access(file, os.R_OK):
        raise sqlite3.OperationalError(
            f"{file}: permission denied: run as root or as a member of the group that owns it"
        )
    uri = file.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise type(exc)(f"{file}: {exc}") from exc
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if not isinstance(exc, sqlite3.OperationalError) or os.access(file.parent, os.W_OK):
            # SQLite's words ("file is not a database") do not say which file.
            raise type(exc)(f"{file}: {exc}") from exc
        if _wal(file).exists():
            raise sqlite3.OperationalError(
                f"{file}: {exc}: the last writer left a WAL ({_wal(file).name}) that only a "
                f"user who may write to {file.parent} can read; start vmgated (it takes the "
                "WAL in) or run this as the daemon's user"
            ) from exc
    return sqlite3.connect(
        f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, factory=_Immutable
    )


def _wal(file: Path) -> Path:
    return file.with_name(file.name + "-wal")


@contextmanager
def snapshot(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction, closed on exit."""
    conn = connect_ro(path)
    try:
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
        if isinstance(conn, _Immutable) and _wal(Path(path)).exists():
            # Read without locks: a daemon that started meanwhile may have moved pages.
            raise sqlite3.OperationalError(
                f"{path}: vmgated started while this was being read from its stopped "
                "ledger; run the command again"
            )
    finally:
        conn.close()


def calls(
    path: str | os.PathLike[str],
    *,
    customer: str | None = None,
    trunk: str | None = None,
    client: str | None = None,
    reseller: str | None = None,
    since: EpochUs | None = None,
    until: EpochUs | None = None,
    unrated: bool = False,
    limit: int = 100,
) -> list[CallEntry]:
    """Call history, newest start first, the latest rating of each call.

    `since` is inclusive and `until` exclusive (call start, EpochUs); `reseller="direct"`
    selects calls through no reseller; `unrated=True` keeps calls with an unrated leg.
    """
    where = [_LATEST]
    args: list[Any] = []
    for column, value in (
        ("customer", customer),
        ("trunk", trunk),
        ("client", client),
        ("reseller", reseller),
    ):
        if value is not None:
            where.append(f"c.{column} = ?")
            args.append(value)
    if since is not None:
        where.append("c.start_at >= ?")
        args.append(since)
    if until is not None:
        where.append("c.start_at < ?")
        args.append(until)
    if unrated:
        where.append(_UNRATED)
    args.append(max(0, limit))
    sql = (
        f"SELECT {_COLUMNS} FROM calls AS c WHERE {' AND '.join(where)} "
        "ORDER BY c.start_at DESC, c.seq DESC LIMIT ?"
    )
    with snapshot(path) as conn:
        return [call_from_row(row) for row in conn.execute(sql, args)]


def get_call(path: str | os.PathLike[str], uid: str) -> CallEntry | None:
    """The latest rating of call `uid`, or None when the call is not in history."""
    with snapshot(path) as conn:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM calls AS c WHERE c.call_uid = ? ORDER BY c.seq DESC LIMIT 1",
            (uid,),
        ).fetchone()
    return None if row is None else call_from_row(row)


def unrated_calls(path: str | os.PathLike[str]) -> list[CallEntry]:
    """Every call whose latest rating has an unrated leg, oldest first (rerate order)."""
    with snapshot(path) as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM calls AS c WHERE {_UNRATED} AND {_LATEST} ORDER BY c.seq"
        ).fetchall()
    return [call_from_row(row) for row in rows]


def payments(path: str | os.PathLike[str], limit: int = 50) -> list[PaymentRecord]:
    """Recent payments and payouts, newest first."""
    with snapshot(path) as conn:
        rows = conn.execute(
            "SELECT t.created, p.direction, p.target_type, p.target, p.amount, p.reference "
            "FROM payments AS p JOIN transactions AS t ON t.seq = p.seq "
            "ORDER BY p.seq DESC LIMIT ?",
            (max(0, limit),),
        ).fetchall()
    return [PaymentRecord(*row) for row in rows]


def balances(path: str | os.PathLike[str], currency: str) -> tuple[Summary, list[AccountBalance]]:
    """The four summary figures and every account of `currency`, read from the file."""
    with snapshot(path) as conn:
        by_account, seq = load(conn)
    projection = Balances(by_account, seq)
    return projection.summary(currency), projection.accounts(currency)


def head(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(seq, hash) of the last transaction; (0, 64 zeros) for an empty ledger."""
    with snapshot(path) as conn:
        row = conn.execute(
            "SELECT seq, hash FROM transactions ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
