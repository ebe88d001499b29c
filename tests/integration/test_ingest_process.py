"""The ingest process (vmgated/ingest.py): killed, it loses nothing and bills nothing twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipcalls import Call, Env, call_datagrams, harness, make_env, send, wait_for

packet_counts = harness.packet_counts


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    os.kill(e.daemon.proc.pid, signal.SIGCONT)  # in case the test stopped it
    e.daemon.stop()


def ingest_pid(daemon_pid: int) -> int | None:
    """The daemon's child running `python -m vmgated.ingest`, if there is one."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == daemon_pid and b"vmgated.ingest" in cmd:
            return int(stat.parent.name)
    return None


def blocked_on_pipe(pid: int) -> bool:
    return "pipe" in Path(f"/proc/{pid}/wchan").read_text()


def test_killed_while_holding_journalled_batches_the_daemon_replays_them_once(env: Env) -> None:
    daemon = env.daemon.proc.pid
    child = ingest_pid(daemon)
    assert child is not None
    # Stop the event loop: the ingest process goes on reading, journalling and writing frames
    # until the pipe is full and it blocks with batches journalled but not handed over.
    os.kill(daemon, signal.SIGSTOP)
    calls: list[Call] = []
    try:
        deadline = time.monotonic() + 60
        while not blocked_on_pipe(child):
            assert time.monotonic() < deadline, "the ingest process never filled its pipe"
            batch = [Call(f"ingest-kill-{len(calls) + i}") for i in range(500)]
            send(env.hep_port, [d for c in batch for d in call_datagrams(c)])
            calls += batch
            time.sleep(0.2)
        last = Call(f"ingest-kill-{len(calls)}")  # read after the kill: by the next process
        calls.append(last)
        os.kill(child, signal.SIGKILL)
        send(env.hep_port, call_datagrams(last))
    finally:
        os.kill(daemon, signal.SIGCONT)
    wait_for(lambda: ingest_pid(daemon) not in (None, child), timeout=20)
    billed = env.wait_calls(len(calls), "--limit", str(2 * len(calls)), timeout=60)
    assert sorted(c["call_id"] for c in billed) == sorted(c.call_id for c in calls)
    logs = env.daemon.logs()
    assert "ingest process exited with status -9" in logs
    replayed = [line for line in logs.splitlines() if "datagrams the ingest process had" in line]
    assert replayed and int(replayed[0].split("replayed ")[1].split()[0]) > 0, replayed
    assert env.ctl("ledger", "verify").returncode == 0
    counts = packet_counts(env.scrape())
    assert counts[("ingest", "restart")] == 1 and counts[("ingest", "replayed")] > 0, counts
    # Restarted on a new journal file (the dead one may end in a torn record); the old one is
    # removed by the first snapshot after the replay.
    assert "(journal ingest.2)" in logs


def test_a_stop_hands_over_every_batch_and_a_restart_replays_none_twice(env: Env) -> None:
    calls = [Call(f"ingest-stop-{i}") for i in range(50)]
    env.send(*calls)
    env.wait_calls(len(calls))
    assert env.daemon.stop() == 0
    env.restart()
    env.send(Call("ingest-after"))
    billed = env.wait_calls(len(calls) + 1)
    assert len({c["call_id"] for c in billed}) == len(calls) + 1
