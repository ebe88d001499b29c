"""A start that fails part-way exits with one clear line instead of hanging (issue 5).

The ledger is open by the time the metrics and control sockets are bound; its SQLite thread
is not a daemon thread, so before `App._abort_start` a taken metrics port left a process that
printed a traceback and then never exited (systemd would have waited for its start timeout).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.daemon import free_port, write_config

EXIT_WITHIN_S = 30  # generous for a loaded CI box; the fixed daemon exits in about a second


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    """Run vmgated in the foreground; a hang fails the test at EXIT_WITHIN_S."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "vmgated.main", "--config", str(config)],
            cwd=config.parent, capture_output=True, text=True, timeout=EXIT_WITHIN_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"vmgated hung after a failed start:\n{exc.stderr!r}")


def test_a_metrics_port_in_use_fails_the_start_and_the_process_exits(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, hep_port=free_port(), metrics_port=port)
        done = run_daemon(config)
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # Nothing half-started is left behind: no control socket file claims a daemon is there.
    assert not (tmp_path / "var" / "control.sock").exists()


def test_an_unusable_control_socket_path_fails_the_start_and_the_process_exits(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, hep_port=free_port(),
                          metrics_port=free_port(socket.SOCK_STREAM))
    text = config.read_text().replace("control: ./var/control.sock",
                                      "control: ./no-such-dir/control.sock")
    config.write_text(text)
    done = run_daemon(config)
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and "no-such-dir" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_after_a_failed_start_the_same_state_dir_starts_cleanly(tmp_path: Path) -> None:
    # The failed start opened the ledger and the journal; closing them must leave a state dir
    # the next start accepts (no stale lock, no half-written snapshot).
    hep, metrics = free_port(), free_port(socket.SOCK_STREAM)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", metrics))
        taken.listen()
        config = write_config(tmp_path, hep_port=hep, metrics_port=metrics)
        assert run_daemon(config).returncode == 1
    from tests.e2e.daemon import Vmgated

    daemon = Vmgated(config, hep_port=hep, metrics_port=metrics).start()
    try:
        assert daemon.ctl_json("ledger", "verify")["ok"] is True
    finally:
        daemon.stop()


def test_a_ledger_file_that_is_not_a_database_is_named_and_the_start_fails(
    tmp_path: Path,
) -> None:
    # The ledger is the truth: a damaged one must stop the start (unlike a dialog snapshot),
    # and the line must say which file (SQLite only says "file is not a database").
    config = write_config(tmp_path, hep_port=free_port(),
                          metrics_port=free_port(socket.SOCK_STREAM))
    (tmp_path / "var").mkdir(exist_ok=True)
    (tmp_path / "var" / "ledger.db").write_bytes(b"not a database, not even close" * 10)
    done = run_daemon(config)
    assert done.returncode == 1, done.stderr
    assert "cannot start: ledger " in done.stderr, done.stderr
    assert "ledger.db: file is not a database" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    # Different ports and control socket, same state_dir: nothing else would stop it, and the
    # two would append to the same journal and replace each other's dialog snapshots.
    from tests.e2e.daemon import Vmgated

    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    hep, metrics = free_port(), free_port(socket.SOCK_STREAM)
    first = Vmgated(write_config(first_dir, hep_port=hep, metrics_port=metrics),
                    hep_port=hep, metrics_port=metrics).start()
    try:
        config = write_config(second_dir, hep_port=free_port(),
                              metrics_port=free_port(socket.SOCK_STREAM))
        text = config.read_text().replace("state_dir: ./var", f"state_dir: {first_dir / 'var'}")
        config.write_text(text.replace("control: ./var/control.sock", "control: ./control.sock"))
        done = run_daemon(config)
        assert done.returncode == 1, done.stderr
        assert f"cannot start: state dir {first_dir / 'var'} is in use by another vmgated " \
               f"(pid {first.proc.pid})" in done.stderr, done.stderr  # type: ignore[union-attr]
        assert "Traceback" not in done.stderr
        assert first.ctl("status", check=False).returncode == 0  # the first one is untouched
    finally:
        first.stop()
    # Released at exit (kill -9 too: the kernel drops the lock with the process).
    assert run_daemon_briefly(config)


def run_daemon_briefly(config: Path) -> bool:
    """Start vmgated, see it become ready (control socket up), stop it; True if it did."""
    from tests.e2e.daemon import Vmgated

    daemon = Vmgated(config).start()
    return daemon.stop() == 0
