"""The WAL stays bounded under continuous writes (it once grew to 6 GB in a 13-minute soak).

A PASSIVE checkpoint copies frames but never rewinds the WAL while the writer keeps
appending, so the file (and the `-shm` index mapped into the daemon, which showed up as RSS
growth) grew without end. Real SQLite file, real writer, a reader taking snapshots meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from ledger import transactions as txs
from ledger.store import Ledger, configure
from ledger.verify import verify
from ledger.wal import copy_wal, rewind_wal

T0 = 1_795_379_849_000_000
EVERY = 200  # transactions between WAL checkpoints, small so the test is quick


def _wal_resets(path: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one at each rewind."""
    with open(f"{path}-wal", "rb") as f:
        header = f.read(16)
    return struct.unpack(">I", header[12:16])[0] if len(header) == 16 else 0


async def _write(path: Path, n: int, sizes: list[int], resets: list[int]) -> None:
    # Small groups and everything queued at once: the writer never idles, as under load.
    ledger = await Ledger.open(path, wal_checkpoint_every=EVERY, batch_max=20, batch_ms=0)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            # A short read now and then, as vmgatectl and the metrics do.
            reader.execute("SELECT count(*) FROM transactions").fetchone()
            sizes.append(os.path.getsize(f"{path}-wal"))
            resets.append(_wal_resets(path))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(
            *(
                ledger.submit_nowait(txs.payment_in("acme", 1_000_000, f"p{i}", T0 + i, "USD"))
                for i in range(n)
            )
        )
    finally:
        done.set()
        await sampler
        reader.close()
        await ledger.close()


def test_wal_is_rewound_under_continuous_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    n = 12_000
    sizes: list[int] = []
    resets: list[int] = []
    asyncio.run(_write(path, n, sizes, resets))
    assert len(sizes) > 20
    # Never rewound (PASSIVE only, before the fix), the counter stays 0 and the file grows
    # linearly: 13.5 MB at half-time, 28.6 MB at the end of this run. Rewound on the
    # writer's connection after each copy, it stays small (59 rewinds of 60 checkpoints,
    # WAL ≤ 0.6 MB in five runs; 40–51 and 4.6–12 MB with RESTART from a side connection).
    assert max(resets) >= 10, resets[-5:]
    assert max(sizes) < 20 << 20, max(sizes)
    report = verify(str(path))
    assert report.ok and report.head_seq == n


def _wal_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    configure(db)  # the ledger writer's pragmas: WAL, no autocheckpoint, size limit
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("CREATE TABLE t (x INTEGER)")
    for i in range(50):
        db.execute("INSERT INTO t VALUES (?)", (i,))
    return db


def test_rewind_restarts_the_wal_and_restores_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    db = _wal_db(path)
    before = _wal_resets(path)
    copy_wal(str(path))
    assert rewind_wal(db) is True
    db.execute("INSERT INTO t VALUES (0)")  # the first write after a rewind restarts the WAL
    assert _wal_resets(path) == before + 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    db.close()


def test_rewind_gives_up_quickly_while_a_reader_holds_an_old_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    db = _wal_db(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # snapshot taken, kept open
    db.execute("INSERT INTO t VALUES (1)")  # so the reader's snapshot is an old one
    started = time.monotonic()
    assert rewind_wal(db) is False
    assert time.monotonic() - started < 1.0  # WAL_RESTART_WAIT_MS, not the 5 s timeout
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    reader.execute("COMMIT")
    assert rewind_wal(db) is True
    reader.close()
    db.close()


def test_rewind_on_a_broken_connection_reports_instead_of_raising(tmp_path: Path) -> None:
    db = _wal_db(tmp_path / "w.db")
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        db.execute("SELECT 1")  # closed: every call raises
    assert rewind_wal(db) is False
