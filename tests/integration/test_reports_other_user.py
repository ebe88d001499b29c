"""Reports of a stopped daemon's ledger, read by a clerk in the daemon's group.

vmgated keeps its state directory 0750 and its files 0640 (README): a clerk in its group
reads, never writes. A stopped daemon leaves no WAL and no WAL index (`-shm`) beside the
ledger, and a read-only SQLite reader creates the index when it is missing — which the clerk
may not do: every report failed with a traceback ("attempt to write a readonly database").
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from otheruser import CLERK, DAEMON_GID, as_user, vmgatectl_as

from ledger import transactions as tx
from ledger.store import Ledger

DAEMON = 41010
T0 = 1_795_000_000_000_000


@pytest.fixture
def stopped_ledger() -> Iterator[Path]:
    """A closed ledger with one payment, in a state dir laid out as the daemon's user makes it."""
    top = Path(tempfile.mkdtemp(prefix="vmgated-reports-"))
    try:
        top.chmod(0o755)
        state = top / "var"
        state.mkdir(mode=0o750)
        db = state / "ledger.db"

        async def write() -> None:
            ledger = await Ledger.open(db)
            await ledger.submit(tx.payment_in("acme", 5_000_000, "bank-1", T0, "USD"))
            await ledger.close()

        asyncio.run(write())
        # No WAL, no index; the write process's lock file stays (empty: a lock, not data).
        assert sorted(p.name for p in state.iterdir()) == ["ledger.db", "ledger.db.lock"]
        assert (state / "ledger.db.lock").stat().st_size == 0
        for path in (state, db):
            os.chown(path, DAEMON, DAEMON_GID)
        db.chmod(0o640)
        yield db
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)


_REPORTS = """
import sys
from ledger import reports
from ledger.verify import verify
db = sys.argv[1]
print(reports.payments(db)[0].reference, reports.head(db)[0])
print(verify(db).ok)
"""


def test_a_clerk_reads_a_stopped_daemons_ledger(stopped_ledger: Path) -> None:
    proc = as_user(CLERK, [DAEMON_GID], [sys.executable, "-c", _REPORTS, str(stopped_ledger)],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["bank-1", "1", "True"]
    # The clerk's reads left nothing behind (no WAL, no index of its own).
    assert sorted(p.name for p in stopped_ledger.parent.iterdir()) == [
        "ledger.db",
        "ledger.db.lock",
    ]


_HOLD = """
import sys
from ledger import reports
try:
    with reports.snapshot(sys.argv[1]) as conn:
        print(conn.execute("SELECT count(*) FROM transactions").fetchone()[0], flush=True)
        sys.stdin.readline()  # the daemon starts here
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_daemon_starting_under_a_lockless_read_is_reported(stopped_ledger: Path) -> None:
    """The stopped ledger is read without locks; a daemon that starts meanwhile (its WAL
    appears) may move pages under the reader, so the read is refused, not trusted."""
    proc = as_user(CLERK, [DAEMON_GID], [sys.executable, "-c", _HOLD, str(stopped_ledger)],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "1"
    wal = stopped_ledger.with_name("ledger.db-wal")
    wal.touch()
    out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("OperationalError") and "vmgated started while" in out, out


def test_a_wal_left_by_a_crash_is_named(stopped_ledger: Path) -> None:
    stopped_ledger.with_name("ledger.db-wal").write_bytes(b"")
    proc = as_user(CLERK, [DAEMON_GID], [sys.executable, "-c", _REPORTS, str(stopped_ledger)],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "the last writer left a WAL (ledger.db-wal)" in err, err


OUTSIDER = 41011  # neither the daemon's user nor in its group
CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"


def _config_for(db: Path) -> str:
    """The small test tenant, readable by all, with `db`'s directory as its state_dir."""
    text = (CONFIGS / "small.yaml").read_text()
    config = db.parent.parent / "small.yaml"
    config.write_text(text.replace("decks/", f"{CONFIGS}/decks/")
                      .replace("state_dir: ./var", f"state_dir: {db.parent}"))
    config.chmod(0o644)
    return str(config)


def test_someone_outside_the_group_gets_a_refusal_not_a_traceback(stopped_ledger: Path) -> None:
    config = _config_for(stopped_ledger)
    for command in (["calls"], ["balances"], ["payments"], ["ledger", "verify"]):
        out = vmgatectl_as(OUTSIDER, [], "--config", config, *command)
        assert out.returncode == 1, command
        assert out.stderr == (f"vmgatectl: error: permission denied on {stopped_ledger.parent}: "
                              "run as root or as a member of the vmgated group\n"), out.stderr
    stopped_ledger.parent.chmod(0o755)  # the directory open, the file still 0640
    out = vmgatectl_as(OUTSIDER, [], "--config", config, "calls")
    assert out.returncode == 1
    assert out.stderr == (f"vmgatectl: error: reading the ledger: {stopped_ledger}: permission "
                          "denied: run as root or as a member of the group that owns it\n")
