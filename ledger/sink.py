"""The ledger's write process: the one connection that writes the file, in a process of its own.

    python -m ledger.sink PATH PARENT_PID WAL_CHECKPOINT_EVERY

Spawned by `Ledger.open` (ledger/sinkclient.py talks to it); never run by hand.

Why a process and not a thread: with the SQLite connection on a thread of the daemon, the
thread needs the GIL to bind every value of every row (~80 per call transaction) and to come
back from each `sqlite3_step`, and it waits up to the 5 ms switch interval each time the event
loop holds it. Measured with `bench/ledger.py` (2026-11-24): the process used exactly one core
(CPU time = wall time), 35.8 µs per call transaction on the loop's thread plus 13.6 µs on the
SQLite thread, one after the other. In a process of its own the binding, the B-tree work and
the fsync run on the second core; the daemon pays a memo-less pickle of the group's rows
(~1.3 µs per call transaction). Since 2026-11-24 the group's planning (content digests, seqs,
chain hashes, row tuples, the lookup of keys the file holds: ledger/planner.py) is done here
too, and the daemon sends each transaction's checked rows: ~11 µs per call transaction off
the event loop, which was the bottleneck of bench/e2e.py.

What it does, in order:
1. Dies with its parent (`PR_SET_PDEATHSIG`, Linux) and exits at end of input, so a killed
   daemon leaves no writer behind; SIGINT and SIGTERM are ignored (a Ctrl-C or a stop reaches
   the daemon, which then closes this process in order). Grows its request pipe
   (`sinkclient.PIPE_BYTES`).
2. Takes an exclusive `flock` on `PATH.lock`, waiting up to LOCK_WAIT_S for a writer that is
   still dying (a daemon restarted right after a `kill -9`): only then is the head read, so
   no stale writer can commit behind the new one's back.
3. Opens the file with the writer's pragmas, migrates it, installs the append-only
   authorizer, and answers "ready" (or the error).
4. Answers requests until "close" or end of input: `group` (one group of checked
   transactions, planned here — digests, seqs, chain, rows — and written in one SQLite
   transaction: `write_group`), `head` (the file's last seq and hash), `checkpoint` (the
   balance checkpoint rows), `execute` (one
   statement: diagnostics and tests), `close` (fold the WAL in, exit). Between groups it copies
   and rewinds the WAL (ledger/wal.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import pickle
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from itertools import chain
from typing import IO, Any

from ledger.codec import CALL_FIELDS, GENESIS_HASH, PAYMENT_FIELDS, RateRow
from ledger.errors import LedgerError, LedgerWriteFailed
from ledger.planner import Wire, Written, plan_group
from ledger.sinkclient import FRAME, dump_frame, widen_pipe
from ledger.store import FILE_MODE, append_only_authorizer, configure, migrate
from ledger.wal import WalKeeper

log = logging.getLogger(__name__)

LOCK_WAIT_S = 10.0
"""How long a new writer waits for the previous one to let go of the file."""

_PR_SET_PDEATHSIG = 1

_INSERT_TX = (
    "INSERT INTO transactions (seq, key, kind, currency, created, reason, digest, prev_hash, "
    "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_POSTING = "INSERT INTO postings (seq, idx, account, amount) VALUES (?, ?, ?, ?)"
INSERT_CALL = (
    f"INSERT INTO calls (seq, {', '.join(CALL_FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(CALL_FIELDS) + 1))})"
)
INSERT_PAYMENT = (
    f"INSERT INTO payments (seq, {', '.join(PAYMENT_FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(PAYMENT_FIELDS) + 1))})"
)
_INSERT_RATE = "INSERT INTO used_rates (plan, prefix, valid_since, seq) VALUES (?, ?, ?, ?)"
_INSERT_MARK = (
    "INSERT INTO checkpoint_marks (seq, hash, created, accounts) VALUES (?, ?, ?, ?)"
)
_INSERT_BALANCE = (
    "INSERT INTO checkpoints (seq, currency, account, balance) VALUES (?, ?, ?, ?)"
)
_HEAD = "SELECT seq, hash FROM transactions ORDER BY seq DESC LIMIT 1"
_LOOKUP = (
    "SELECT t.key, t.seq, t.digest, t.hash FROM json_each(?) AS j "
    "JOIN transactions AS t ON t.key = j.value"
)

Rows = list[tuple[Any, ...]]


class _Bulk:
    """An INSERT of many rows per statement: SQLite steps once per chunk, not per row.

    Fewer rows than a chunk go through the one-row statement (a fixed chunk size keeps one
    prepared statement). Chunks also cut pysqlite's per-statement overhead.
    """

    __slots__ = ("chunk", "many", "one")

    def __init__(self, one: str, width: int, chunk: int) -> None:
        head, _, values = one.partition(" VALUES ")
        self.one = one
        self.chunk = chunk
        self.many = f"{head} VALUES {', '.join([values] * chunk)}"
        assert values.count("?") == width

    def run(self, db: sqlite3.Connection, rows: Rows) -> None:
        """Insert `rows` (all of the statement's width)."""
        chunk = self.chunk
        whole = len(rows) - len(rows) % chunk
        for lo in range(0, whole, chunk):
            db.execute(self.many, tuple(chain.from_iterable(rows[lo : lo + chunk])))
        if whole < len(rows):
            db.executemany(self.one, rows[whole:])


_TX_BULK = _Bulk(_INSERT_TX, 9, 100)
_POSTING_BULK = _Bulk(_INSERT_POSTING, 4, 250)
_CALL_BULK = _Bulk(INSERT_CALL, len(CALL_FIELDS) + 1, 50)
_PAYMENT_BULK = _Bulk(INSERT_PAYMENT, len(PAYMENT_FIELDS) + 1, 100)


def write_group(
    db: sqlite3.Connection,
    base_seq: int,
    base_hash: str,
    units: list[list[Wire]],
    new_since: int | None,
    used_rates: set[RateRow],
) -> Written:
    """Plan one group against the file (ledger/planner.py) and write it in one transaction.

    Returns the head after it (seq, hash hex), an outcome per transaction in the order sent,
    and the deck rows it recorded as used (also added to `used_rates`), once COMMIT returned
    (durable). Raises LedgerWriteFailed when the file's head is not `base_seq`/`base_hash`
    (another process wrote), sqlite3.Error when SQLite refuses the group (nothing written).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(_HEAD).fetchone()
        on_disk = (0, GENESIS_HASH) if row is None else (row[0], row[1])
        if on_disk != (base_seq, base_hash):
            raise LedgerWriteFailed(
                f"the file's head is seq {on_disk[0]}, this writer's is {base_seq}: "
                "another process wrote to the ledger; stop it and restart vmgated"
            )
        keys = list({wire[0]: None for unit in units for wire in unit})
        known = {k: (s, d, h) for k, s, d, h in db.execute(_LOOKUP, (json.dumps(keys),))}
        plan = plan_group(units, base_seq, bytes.fromhex(base_hash), known, used_rates, new_since)
        _TX_BULK.run(db, plan.tx_rows)
        _POSTING_BULK.run(db, plan.posting_rows)
        _CALL_BULK.run(db, plan.call_rows)
        _PAYMENT_BULK.run(db, plan.payment_rows)
        if plan.rate_rows:
            db.executemany(_INSERT_RATE, plan.rate_rows)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    used_rates.update(plan.new_rates)
    return plan.seq, plan.prev_hex, plan.results, plan.new_rates


def write_checkpoint(
    db: sqlite3.Connection, seq: int, head_hash: str, created: int, rows: Rows
) -> None:
    """Write one balance checkpoint (its mark and one row per account) in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_INSERT_MARK, (seq, head_hash, created, len(rows)))
        db.executemany(_INSERT_BALANCE, rows)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite ends the transaction itself on some errors (SQLITE_FULL: disk full); a ROLLBACK
    # then fails and its error would hide the real one.
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("ledger: ROLLBACK failed after a failed write")


def lock_file(path: str, wait_s: float = LOCK_WAIT_S) -> int:
    """Hold an exclusive flock on `path` + ".lock"; the open descriptor (kept until exit).

    Raises LedgerError if another process still holds it after `wait_s` seconds.
    """
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LedgerError(
                    f"{path}: another process is writing this ledger (it holds {path}.lock); "
                    "stop it first"
                ) from None
            time.sleep(0.01)


def die_with(parent: int) -> None:
    """Be killed when the parent dies (Linux); exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class _Sink:
    """The request loop of one write process."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self._rfile = rfile
        self._wfile = wfile

    def send(self, message: tuple[Any, ...]) -> None:
        """Write one reply frame and flush it."""
        self._wfile.write(dump_frame(message))
        self._wfile.flush()

    def receive(self) -> tuple[Any, ...] | None:
        """The next request, or None at end of input (the parent is gone or closed us)."""
        head = self._rfile.read(FRAME.size)
        if len(head) < FRAME.size:
            return None
        (size,) = FRAME.unpack(head)
        body = self._rfile.read(size)
        if len(body) < size:
            return None
        message: tuple[Any, ...] = pickle.loads(body)
        return message

    def fail(self, exc: BaseException) -> None:
        """Reply with an error the parent rebuilds by class name."""
        self.send(("err", type(exc).__name__, str(exc)))


def serve(path: str, parent: int, wal_every: int, rfile: IO[bytes], wfile: IO[bytes]) -> int:
    """Run the write process on `path` until close or end of input; the exit status."""
    sink = _Sink(rfile, wfile)
    widen_pipe(rfile.fileno())
    try:
        lock_file(path)
        db = sqlite3.connect(path, isolation_level=None)
        configure(db)
        migrate(db)
        db.set_authorizer(append_only_authorizer)
        row = db.execute(_HEAD).fetchone()
    except (LedgerError, sqlite3.Error, OSError) as exc:
        sink.fail(exc)
        return 1
    wal = WalKeeper(path, 0 if row is None else int(row[0]), wal_every)
    used_rates: set[RateRow] = {
        (str(p), str(c), int(v))
        for p, c, v in db.execute("SELECT plan, prefix, valid_since FROM used_rates")
    }
    sink.send(("ok", None))
    while (request := sink.receive()) is not None:
        op = request[0]
        try:
            if op == "group":
                _, base_seq, base_hash, units, new_since = request
                done = write_group(db, base_seq, base_hash, units, new_since, used_rates)
                sink.send(("ok", done))
                wal.after_commit(db, done[0])
            elif op == "head":
                row = db.execute(_HEAD).fetchone()
                sink.send(("ok", (0, GENESIS_HASH) if row is None else (row[0], row[1])))
            elif op == "checkpoint":
                write_checkpoint(db, *request[1:])
                sink.send(("ok", None))
            elif op == "execute":
                sink.send(("ok", db.execute(request[1], request[2]).fetchall()))
            elif op == "close":
                wal.join()
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    # Every commit is durable in the WAL; the next open folds it in.
                    log.warning("ledger: WAL not folded into %s at close: %s", path, exc)
                db.close()
                sink.send(("ok", None))
                return 0
            else:
                raise LedgerError(f"ledger write process: unknown request {op!r}")
        except (LedgerError, sqlite3.Error) as exc:
            sink.fail(exc)
        except Exception as exc:
            # A bug here (the planner runs in this process) fails this request, said with its
            # traceback, instead of killing the process: the daemon would only start another
            # one and send it the same group.
            log.exception("ledger write process: %s request failed", op)
            sink.fail(exc)
    wal.join()
    db.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m ledger.sink PATH PARENT_PID WAL_CHECKPOINT_EVERY`."""
    path, parent, wal_every = argv if argv is not None else sys.argv[1:]
    die_with(int(parent))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="ledger write process: %(message)s"
    )
    sys.exit(serve(path, int(parent), int(wal_every), sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()
