"""Issue 5: a group SQLite refuses (here: the write lock held by another process past the
busy timeout, a real `database is locked`) is retried, not lost, and billed once."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipcalls import Call, Env, make_env, wait_for

from ledger.verify import verify


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    e.daemon.stop()


def retries(env: Env) -> int:
    m = re.search(r'^vmgated_packets_total\{input="ledger",result="retry"\} (\d+)',
                  env.scrape(), re.M)
    return int(m.group(1)) if m else 0


def test_a_group_refused_by_sqlite_is_retried_and_billed_once(env: Env) -> None:
    db = env.daemon.ledger_path
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE now times out
        env.send(Call("locked-1"))
        wait_for(lambda: retries(env) >= 1, timeout=20)
        assert env.calls() == []  # nothing half-written while refused
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    [row] = env.wait_calls(1, timeout=20)
    assert row["call_id"] == "locked-1" and row["billsec"] == 60
    env.daemon.stop()
    assert [c["call_id"] for c in env.calls()] == ["locked-1"]
    assert verify(db).ok
