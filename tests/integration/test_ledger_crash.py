"""Crash test: a child submits as fast as it can and records each acknowledged key; it is
SIGKILLed at seeded random moments (20 times, on the same file). After each kill: verify
passes, every acknowledged key is present exactly once, and every present transaction is
whole (verify's digest covers the transaction row, all its postings and its call/payment
row, so a half-written transaction cannot pass; the counts below say it again plainly)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ledger.verify import verify

CHILD = Path(__file__).with_name("ledger_crash_child.py")
KILLS = 20
SEED = 20261122


def test_acknowledged_transactions_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db, acks = tmp_path / "ledger.db", tmp_path / "acks.txt"
    acked_total = 0
    started = time.monotonic()
    for run in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(db), str(acks), str(run)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Sometimes while it opens or migrates, mostly while it commits at full speed.
            time.sleep(rng.uniform(0.05, 0.4) if run % 4 == 0 else rng.uniform(0.4, 1.0))
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if child.stderr is not None:
                child.stderr.close()

        report = verify(db)
        assert report.ok, f"after kill {run}: {report}"
        keys = acks.read_text().split() if acks.exists() else []
        acked_total = len(set(keys))
        with sqlite3.connect(db) as conn:
            present = {
                k: n for k, n in conn.execute("SELECT key, COUNT(*) FROM transactions GROUP BY key")
            }
            missing = [k for k in set(keys) if present.get(k) != 1]
            assert not missing, (
                f"after kill {run}: acknowledged but not present once: {missing[:5]}"
            )
            # Whole or absent: every call tx has its call row, every payment its payment row,
            # and no child row points at a transaction that is not there.
            assert (
                conn.execute(
                    "SELECT COUNT(*) FROM transactions t WHERE t.kind = 'call' AND NOT EXISTS "
                    "(SELECT 1 FROM calls c WHERE c.seq = t.seq)"
                ).fetchone()[0]
                == 0
            )
            assert (
                conn.execute(
                    "SELECT COUNT(*) FROM transactions t WHERE t.kind LIKE '%pay%' AND NOT EXISTS "
                    "(SELECT 1 FROM payments p WHERE p.seq = t.seq)"
                ).fetchone()[0]
                == 0
            )
            assert (
                conn.execute(
                    "SELECT COUNT(*) FROM postings p WHERE NOT EXISTS "
                    "(SELECT 1 FROM transactions t WHERE t.seq = p.seq)"
                ).fetchone()[0]
                == 0
            )
            # A call with a rated reseller leg has 4 postings, a direct one 3.
            assert (
                conn.execute(
                    "SELECT COUNT(*) FROM calls c WHERE (SELECT COUNT(*) FROM postings p "
                    "WHERE p.seq = c.seq) != (CASE WHEN c.reseller = 'direct' THEN 3 ELSE 4 END)"
                ).fetchone()[0]
                == 0
            )
    assert acked_total > 1_000, "the child acknowledged too little to prove anything"
    assert time.monotonic() - started < 90
