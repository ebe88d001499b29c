"""The ledger file's write-ahead log: how often it is copied into the file, and rewound.

SQLite's own autocheckpoint is off (`store.configure`): it would run inside a commit, on the
writer's connection, for as long as the copy takes. Instead the write process (ledger/sink.py)
copies the WAL's frames on a side connection in a thread of its own (`copy_wal`, PASSIVE:
never blocks a commit) every WAL_CHECKPOINT_EVERY transactions, and once that copy has ended
rewinds the WAL between two groups on its own connection (`rewind_wal`). `WalKeeper` is that
schedule.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

WAL_CHECKPOINT_EVERY = 5_000
"""Transactions between WAL checkpoints (a call transaction adds ~16 KB of WAL frames: every
commit rewrites the B-tree pages it touches, so 5,000 keep the WAL near 80 MB)."""

WAL_SIZE_LIMIT = 64 << 20
"""Bytes the WAL file is truncated to when the writer rewinds it (a burst may have grown it)."""

WAL_RESTART_WAIT_MS = 20
"""How long a rewind may wait for readers on older snapshots (the writer waits with it)."""


def copy_wal(path: str) -> None:
    """Copy the WAL's frames into the main file, on its own connection (a side thread).

    PASSIVE: it never blocks a commit, so the writer keeps committing while the bulk of the
    frames is copied. It cannot rewind the WAL under continuous writes (by the time it ends,
    new frames are in); `rewind_wal` does that afterwards, on the writer's connection.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error:
        log.exception("ledger: WAL checkpoint failed (the WAL keeps growing until one works)")


def rewind_wal(db: sqlite3.Connection) -> bool:
    """Checkpoint the frames added since the last copy and rewind the WAL; True if rewound.

    Runs on the writer's own connection between two groups (after `copy_wal`, so few frames
    are left to copy). Without a rewind the WAL grows without end (6 GB in a 13-minute soak,
    its `-shm` index mapped into the process as RSS). RESTART from a side connection did
    rewind it, but it blocks new writers while it waits, and the writer's busy handler then
    sleeps in growing steps: at ~3,000 calls/s every checkpoint stalled the ledger for long
    enough to back up the daemon (zero-loss end to end fell from 40,000 to 30,000 HEP
    packets/s). Here there is no other writer to wait for; only readers on older snapshots
    can hold it, for at most WAL_RESTART_WAIT_MS, and if they do the next checkpoint tries
    again. The next commit then writes the WAL from its start (truncated to
    `journal_size_limit`).
    """
    # Never raises: a failed rewind must not stop the writer, only leave the WAL longer.
    try:
        (was,) = db.execute("PRAGMA busy_timeout").fetchone()
        db.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout={int(was)}")
    except sqlite3.Error:
        log.exception("ledger: WAL rewind failed (the next checkpoint tries again)")
        return False
    if busy:
        log.debug("ledger: WAL not rewound (readers on older snapshots); next checkpoint")
    return not busy


class WalKeeper:
    """When to copy the WAL (a side thread) and rewind it (the caller's connection)."""

    def __init__(self, path: str, head_seq: int, every: int) -> None:
        """`every`: transactions between two copies, counted from `head_seq`."""
        self._path = path
        self._every = every
        self._copied_at = head_seq
        self._copy: threading.Thread | None = None

    def after_commit(self, db: sqlite3.Connection, seq: int) -> None:
        """Between two groups: rewind after a finished copy, start a copy when one is due."""
        if self._copy is not None and not self._copy.is_alive():
            self._copy = None
            rewind_wal(db)
        if seq - self._copied_at >= self._every and self._copy is None:
            self._copied_at = seq
            self._copy = threading.Thread(
                target=copy_wal, args=(self._path,), name="ledger-wal-copy", daemon=True
            )
            self._copy.start()

    def join(self) -> None:
        """Wait for a copy in progress (before the connection closes)."""
        if self._copy is not None:
            self._copy.join()
            self._copy = None
