"""The ledger file: schema and forward migrations, append-only guards, and `Ledger.open`.

One SQLite file in WAL mode with `synchronous=FULL`. The schema is a list of migrations, each
a tuple of SQL statements applied once and recorded in `schema_version`; a file written by a
newer vmgated is refused rather than guessed at. Append-only is enforced twice: BEFORE
UPDATE/DELETE triggers on every table (they hold for any client that does not drop them) and
an authorizer on the write connection that refuses UPDATE, DELETE, DROP and ALTER before a
statement is even prepared. `verify` catches whoever gets past both.

`Ledger` is the facade the daemon holds: it owns the writer task (ledger/writer.py), which
feeds the write process that holds the write connection (ledger/sink.py), the balance
projection (ledger/balances.py), and hands read queries to ledger/reports.py. SPEC §2 lists
aiosqlite for this; it is not used any more: its connection thread shared the GIL with the
event loop, and the ledger could not reach SPEC §10's 100,000 postings/s that way
(bench/README.md, "the writer in its own process").
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable

from ledger import reports
from ledger.balances import Balances, latest_checkpoint, load
from ledger.codec import GENESIS_HASH
from ledger.errors import (
    InvalidTransaction,
    KeyConflict,
    LedgerClosed,
    LedgerError,
    LedgerFull,
    LedgerWriteFailed,
    NotZeroSum,
    SchemaError,
)
from ledger.model import CallEntry, Receipt, Transaction
from ledger.sinkclient import WriteProcess
from ledger.wal import WAL_CHECKPOINT_EVERY, WAL_SIZE_LIMIT
from ledger.writer import CommitHook, Writer

__all__ = [
    "InvalidTransaction",
    "KeyConflict",
    "Ledger",
    "LedgerClosed",
    "LedgerError",
    "LedgerFull",
    "LedgerWriteFailed",
    "NotZeroSum",
    "SchemaError",
]

APPEND_ONLY_TABLES = (
    "schema_version",
    "transactions",
    "postings",
    "calls",
    "payments",
    "used_rates",
    "checkpoint_marks",
    "checkpoints",
)


def _guards(table: str) -> tuple[str, str]:
    return tuple(  # type: ignore[return-value]
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, 'ledger is append-only: {op} on {table} refused'); END"
        for op in ("UPDATE", "DELETE")
    )


_V1 = (
    """CREATE TABLE transactions (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    created INTEGER NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT""",
    """CREATE TABLE postings (
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (seq, idx)
) WITHOUT ROWID, STRICT""",
    """CREATE TABLE calls (
    seq INTEGER PRIMARY KEY,
    call_uid TEXT NOT NULL,
    call_id TEXT NOT NULL,
    trunk TEXT,
    customer TEXT,
    client TEXT,
    network TEXT,
    reseller TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    number TEXT NOT NULL,
    start_at INTEGER NOT NULL,
    answer_at INTEGER,
    end_at INTEGER NOT NULL,
    billsec INTEGER NOT NULL,
    sip_code INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    margin INTEGER NOT NULL,
    flags TEXT NOT NULL,
    leg_parties TEXT NOT NULL,
    c_plan TEXT,
    c_unrated TEXT,
    c_prefix TEXT,
    c_description TEXT,
    c_rate_per_min TEXT,
    c_connection_fee TEXT,
    c_connection_sec INTEGER,
    c_billing_block_sec INTEGER,
    c_valid_since INTEGER,
    c_charged_sec INTEGER,
    c_amount INTEGER,
    v_plan TEXT,
    v_unrated TEXT,
    v_prefix TEXT,
    v_description TEXT,
    v_rate_per_min TEXT,
    v_connection_fee TEXT,
    v_connection_sec INTEGER,
    v_billing_block_sec INTEGER,
    v_valid_since INTEGER,
    v_charged_sec INTEGER,
    v_amount INTEGER,
    r_plan TEXT,
    r_unrated TEXT,
    r_prefix TEXT,
    r_description TEXT,
    r_rate_per_min TEXT,
    r_connection_fee TEXT,
    r_connection_sec INTEGER,
    r_billing_block_sec INTEGER,
    r_valid_since INTEGER,
    r_charged_sec INTEGER,
    r_amount INTEGER
) STRICT""",
    "CREATE INDEX calls_by_uid ON calls (call_uid, seq)",
    "CREATE INDEX calls_by_start ON calls (start_at)",
    "CREATE INDEX calls_unrated ON calls (call_uid) WHERE c_unrated IS NOT NULL "
    "OR v_unrated IS NOT NULL OR r_unrated IS NOT NULL",
    """CREATE TABLE payments (
    seq INTEGER PRIMARY KEY,
    direction TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reference TEXT NOT NULL
) STRICT""",
    """CREATE TABLE used_rates (
    plan TEXT NOT NULL,
    prefix TEXT NOT NULL,
    valid_since INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (plan, prefix, valid_since)
) WITHOUT ROWID, STRICT""",
    """CREATE TABLE checkpoint_marks (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    accounts INTEGER NOT NULL
) STRICT""",
    """CREATE TABLE checkpoints (
    seq INTEGER NOT NULL,
    currency TEXT NOT NULL,
    account TEXT NOT NULL,
    balance INTEGER NOT NULL,
    PRIMARY KEY (seq, currency, account)
) WITHOUT ROWID, STRICT""",
    *(sql for table in APPEND_ONLY_TABLES for sql in _guards(table)),
)

MIGRATIONS: list[tuple[str, ...]] = [_V1]
"""Forward migrations: MIGRATIONS[n-1] takes a file from schema n-1 to n. Never edit one
that has shipped; append a new step instead."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the newest schema (each step in its own transaction); its version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied INTEGER NOT NULL) STRICT"
    )
    current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    if current > len(MIGRATIONS):
        raise SchemaError(
            f"schema_version: the file is at schema {current}, this vmgated knows up to "
            f"{len(MIGRATIONS)}; run a newer vmgated (files are never migrated backwards)"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in MIGRATIONS[version - 1]:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                (version, time.time_ns() // 1000),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite ends it itself on some errors (disk full)
                conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


_REFUSED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_ALTER_TABLE,
    }
)


def append_only_authorizer(
    action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None
) -> int:
    """SQLite authorizer for the write connection: no UPDATE, DELETE, DROP or ALTER."""
    # SQLite's own bookkeeping tables (sqlite_master, sqlite_stat1) stay writable.
    if (
        action in (sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
        and arg1 is not None
        and not arg1.startswith("sqlite_")
    ):
        return sqlite3.SQLITE_DENY
    if action in _REFUSED_ACTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def configure(conn: sqlite3.Connection) -> None:
    """The pragmas every write connection runs with (WAL, synchronous=FULL)."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise SchemaError(f"journal_mode: SQLite kept {mode!r}; the ledger needs WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # A REPLACE conflict deletes rows without a DELETE statement; recursive triggers make
    # the DELETE guard fire for it too.
    conn.execute("PRAGMA recursive_triggers=ON")
    # WAL checkpoints are the writer's (copied on a side thread, rewound between groups),
    # never inside a commit.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


FILE_MODE = 0o640  # a new ledger file's permissions (before the umask)


class _Opened:
    __slots__ = ("balances", "ckpt_seq", "head_hash", "head_seq", "used_rates")

    def __init__(self, path: str) -> None:
        # Read after the write process took the file: it configured and migrated it.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            by_account, seq = load(conn)
            self.balances = Balances(by_account, seq)
            row = conn.execute(
                "SELECT seq, hash FROM transactions ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self.head_seq: int = 0 if row is None else int(row[0])
            self.head_hash: str = GENESIS_HASH if row is None else str(row[1])
            mark = latest_checkpoint(conn)
            self.ckpt_seq = 0 if mark is None else mark[0]
            if mark is not None:
                at = conn.execute(
                    "SELECT hash FROM transactions WHERE seq = ?", (mark[0],)
                ).fetchone()
                if at is None or at[0] != mark[1]:
                    raise SchemaError(
                        f"{path}: checkpoint at seq {mark[0]} does not match the chain; "
                        "run `vmgatectl ledger verify`"
                    )
            self.used_rates = {
                (str(p), str(c), int(v))
                for p, c, v in conn.execute("SELECT plan, prefix, valid_since FROM used_rates")
            }
        finally:
            conn.close()


class Ledger:
    """The append-only ledger of one daemon: submit transactions, read balances and head."""

    def __init__(self, path: str, opened: _Opened, writer: Writer) -> None:
        """Use `await Ledger.open(path)`."""
        self.path = path
        self._balances = opened.balances
        self._writer = writer

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        batch_max: int = 1000,
        batch_ms: float = 5.0,
        queue_max: int = 100_000,
        checkpoint_every: int = 100_000,
        wal_checkpoint_every: int = WAL_CHECKPOINT_EVERY,
    ) -> Ledger:
        """Create or migrate the file, rebuild the balances and start the writer task.

        The write process (ledger/sink.py) starts first: it takes the file's write lock and
        migrates the schema, so the head and balances read next are the ones it will extend.
        """
        if (
            batch_max < 1
            or queue_max < 1
            or batch_ms < 0
            or checkpoint_every < 1
            or wal_checkpoint_every < 1
        ):
            raise ValueError(
                "Ledger.open: batch_max, queue_max, checkpoint_every and wal_checkpoint_every "
                "must be ≥ 1, batch_ms ≥ 0"
            )
        spath = os.fspath(path)
        # Created owner/group-only, as the journal is: it holds every caller's number. SQLite
        # gives its -wal and -shm files the database file's permissions.
        os.close(os.open(spath, os.O_RDWR | os.O_CREAT, FILE_MODE))
        sink = await WriteProcess.start(spath, wal_checkpoint_every=wal_checkpoint_every)
        try:
            opened = await asyncio.to_thread(_Opened, spath)
        except BaseException:
            await sink.abort()
            raise
        writer = Writer(
            sink,
            path=spath,
            wal_checkpoint_every=wal_checkpoint_every,
            balances=opened.balances,
            head=(opened.head_seq, opened.head_hash),
            used_rates=opened.used_rates,
            checkpoint_seq=opened.ckpt_seq,
            batch_max=batch_max,
            batch_ms=batch_ms,
            queue_max=queue_max,
            checkpoint_every=checkpoint_every,
        )
        writer.start()
        return cls(spath, opened, writer)

    async def submit(self, tx: Transaction) -> Receipt:
        """Queue `tx` and wait for the durable commit of its group; see `submit_nowait`."""
        return await self._writer.submit_nowait(tx)

    def submit_nowait(self, tx: Transaction) -> asyncio.Future[Receipt]:
        """Queue `tx`; the future resolves at its durable commit.

        Raises at once: NotZeroSum/InvalidTransaction (nothing written), LedgerFull (queue at
        `queue_max`; retry later), LedgerClosed. The future fails with KeyConflict (same key,
        other content) or LedgerWriteFailed (SQLite refused the group). A duplicate key with
        the same content resolves to the first Receipt with `existed=True`.
        """
        return self._writer.submit_nowait(tx)

    async def submit_linked(self, txs: Iterable[Transaction]) -> list[Receipt]:
        """Commit several transactions atomically (all in one SQLite transaction, or none).

        For rerate pairs: a reversal never lands without its new rating. If any member is a
        KeyConflict, no member is written and every member's error is that conflict.
        """
        return list(await asyncio.gather(*self._writer.submit_linked(list(txs))))

    @property
    def balances(self) -> Balances:
        """The live balance projection (thread-safe reads)."""
        return self._balances

    @property
    def queue_depth(self) -> int:
        """Transactions waiting for the writer."""
        return self._writer.queued

    @property
    def on_commit(self) -> CommitHook | None:
        """Called after each durable group commit with (batch_size, seconds)."""
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, hook: CommitHook | None) -> None:
        self._writer.on_commit = hook

    commit_seconds = on_commit

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed transaction; (0, 64 zeros) for an empty ledger."""
        return self._writer.head

    async def used_rate_rows(self) -> frozenset[tuple[str, str, int]]:
        """(plan, code, valid_since) of every deck row that priced a call in history."""
        return frozenset(self._writer.used_rates)

    async def get_call(self, uid: str) -> CallEntry | None:
        """The latest rating of call `uid`, or None."""
        return await asyncio.to_thread(reports.get_call, self.path, uid)

    async def unrated_calls(self) -> list[CallEntry]:
        """Every call whose latest rating has an unrated leg (oldest first, for rerating)."""
        return await asyncio.to_thread(reports.unrated_calls, self.path)

    async def close(self) -> None:
        """Refuse new work, commit everything queued, write a checkpoint, close the file."""
        await self._writer.close()
