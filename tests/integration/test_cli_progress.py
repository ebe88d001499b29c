"""Issue 5 part 5: long operations draw a progress bar on a terminal, and nothing otherwise.

The terminal is a real pseudo-terminal (the `pty` module) on the CLI's stderr."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from pathlib import Path

from ledger import transactions as txs
from ledger.store import Ledger

T0 = 1_790_000_000_000_000


def make_ledger(state: Path, n: int) -> None:
    async def go() -> None:
        ledger = await Ledger.open(state / "ledger.db")
        try:
            await asyncio.gather(*(
                ledger.submit(txs.payment_in("acme", 1_000_000, f"p{i}", T0 + i, "USD"))
                for i in range(n)))
        finally:
            await ledger.close()

    asyncio.run(go())


def run_verify(state: Path, *, tty: bool) -> tuple[int, str, str]:
    """Run `vmgatectl ledger verify` with stderr on a pty (tty) or a pipe; rc, stdout, stderr."""
    cmd = [sys.executable, "-m", "vmgated.cli.main", "ledger", "verify", "--state-dir", str(state)]
    if not tty:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return out.returncode, out.stdout, out.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read() if proc.stdout else ""
        rc = proc.wait(timeout=60)
    finally:
        os.close(master)
    return rc, stdout, b"".join(chunks).decode()


def test_verify_draws_a_bar_on_a_terminal_and_nothing_on_a_pipe(tmp_path: Path) -> None:
    make_ledger(tmp_path, 25)
    rc, out, err = run_verify(tmp_path, tty=True)
    assert rc == 0 and "ledger OK: 25 transactions" in out
    assert f"\rverify [{'#' * 30}] 25/25" in err
    rc, out, err = run_verify(tmp_path, tty=False)
    assert rc == 0 and "ledger OK: 25 transactions" in out
    assert err == ""


def test_verify_reports_progress_every_10000_transactions(tmp_path: Path) -> None:
    from ledger.verify import verify

    make_ledger(tmp_path, 20_500)
    seen: list[tuple[int, int]] = []
    assert verify(tmp_path / "ledger.db", progress=lambda d, t: seen.append((d, t))).ok
    assert seen == [(10_000, 20_500), (20_000, 20_500), (20_500, 20_500)]
