"""A full disk under the state directory: nothing is lost, nothing is billed twice, and the
log says what is wrong in one line per fault (not a traceback every second).

The state dir is a real 4 MiB tmpfs (root: CI runs as root, as the interface and /proc
sandbox tests also need), filled with a file; SQLite, the journal and the snapshot meet a
real ENOSPC.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipcalls import Call, Env, make_env, wait_for

from ledger.verify import verify


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    var = tmp_path / "var"  # the state dir of make_env's config
    var.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(var)], check=True)
    e = None
    try:
        e = make_env(tmp_path)
        yield e
    finally:
        if e is not None and e.daemon.alive:
            e.daemon.stop()
        subprocess.run(["umount", "-l", str(var)], check=False)


def counter(env: Env, input_: str, result: str) -> int:
    m = re.search(
        rf'^vmgated_packets_total\{{input="{input_}",result="{result}"\}} (\d+)',
        env.scrape(),
        re.M,
    )
    return int(m.group(1)) if m else 0


def test_a_full_disk_delays_billing_and_loses_nothing(env: Env) -> None:
    var = env.dir / "var"
    env.send(Call("before"))
    env.wait_calls(1, timeout=20)
    filler = var / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    env.send(*(Call(f"full-{i}") for i in range(20)))
    wait_for(lambda: counter(env, "ledger", "retry") >= 40, timeout=30)  # two retry rounds
    time.sleep(2)  # a snapshot try meets the full disk too
    assert env.daemon.alive
    assert len(env.calls()) == 1  # nothing half-written while the disk is full
    assert counter(env, "journal", "write_error") > 0
    assert not (var / "dialogs" / "snapshot.tmp").exists()  # no part-written snapshot
    logs = env.daemon.logs()
    assert "dialog snapshot not written" in logs and "No space left on device" in logs
    assert "Traceback" not in logs
    assert logs.count("transactions not written") == 1  # then paced: retries fail each second

    filler.unlink()  # room again: the backlog commits, each call once
    rows = env.wait_calls(21, timeout=30)
    assert sorted(r["call_id"] for r in rows) == sorted(
        ["before", *(f"full-{i}" for i in range(20))]
    )
    # The recovery is said, with the failures the pacing held back (retried each second).
    again = re.search(r"ledger: writing again \((\d+) failed groups since the last message\)",
                      env.daemon.logs())
    assert again is not None and int(again.group(1)) >= 1
    assert env.daemon.stop() == 0
    assert len(env.calls()) == 21
    assert verify(env.daemon.ledger_path).ok


def active_calls(env: Env) -> int:
    return sum(int(m.group(1)) for m in re.finditer(r"^vmgated_active_calls\{.*\} (\d+)$",
                                                    env.scrape(), re.M))


def test_a_stop_that_cannot_write_its_snapshot_says_so_and_fails(env: Env) -> None:
    var = env.dir / "var"
    env.send(Call("before"))
    env.wait_calls(1, timeout=20)
    for name in ("filler", "filler-pages"):  # 64 KiB blocks, then the last 4 KiB pages
        subprocess.run(["dd", "if=/dev/zero", f"of={var / name}", "bs=64k" if name == "filler"
                        else "bs=4k"], capture_output=True)
    env.send(*(Call(f"done-{i}") for i in range(5)))
    # Calls still up: their snapshot (~300 KB) is more than the WAL that closing the ledger
    # gives back, so the last snapshot meets the full disk too.
    env.send(*(Call(f"up-{i}", end=None) for i in range(1000)))
    wait_for(lambda: active_calls(env) == 1000, timeout=30)
    wait_for(lambda: counter(env, "ledger", "retry") >= 5, timeout=30)

    assert env.daemon.stop() == 1  # systemd shows the unit failed
    logs = env.daemon.logs()
    line = next(ln for ln in logs.splitlines() if "snapshot not written at stop" in ln)
    assert line.startswith("CRITICAL")
    # The room left: what closing the ledger's WAL gave back, too little for the snapshot.
    assert re.search(rf"No space left on device \(state dir {re.escape(str(var))}: "
                     r"[0-9.]+ (B|KiB) free of 4\.0 MiB\)", line), line
    assert "5 calls not yet in the ledger and 1000 calls in progress" in line
    assert "Traceback" not in logs

    # Room again: the start recovers from the older snapshot and the journal, bills
    # nothing twice, and the ledger's chain holds.
    for name in ("filler", "filler-pages"):
        (var / name).unlink()
    env.daemon.start()
    assert [r["call_id"] for r in env.calls()].count("before") == 1
    assert env.daemon.stop() == 0
    assert verify(env.daemon.ledger_path).ok


def test_a_start_on_a_full_disk_names_the_file_and_the_room_left(env: Env) -> None:
    var = env.dir / "var"
    assert env.daemon.stop() == 0
    for path in var.iterdir():  # a state dir being set up again, on a disk already full
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name, block in (("filler", "64k"), ("filler-pages", "4k")):
        subprocess.run(["dd", "if=/dev/zero", f"of={var / name}", f"bs={block}"],
                       capture_output=True)
    with pytest.raises(RuntimeError, match="vmgated exited 1"):
        env.daemon.start(timeout=20)
    line = next(ln for ln in env.daemon.logs().splitlines() if "cannot start" in ln)
    assert f"No space left on device: '{var / 'vmgated.lock'}'" in line
    assert f"(state dir {var}: 0 B free of 4.0 MiB)" in line
