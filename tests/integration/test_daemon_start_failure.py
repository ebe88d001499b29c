"""A start that fails part-way exits with one clear line instead of hanging (issue 5).

The ledger is open by the time the metrics and control sockets are bound; its SQLite thread
is not a daemon thread, so before `App._abort_start` a taken metrics port left a process that
printed a traceback and then never exited (systemd would have waited for its start timeout).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from otheruser import as_user

from tests.e2e.daemon import free_port, write_config

SERVICE_UID = 41020  # the service's user (no name: messages show the number)
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
    assert f"cannot start: [Errno 98] metrics http 127.0.0.1:{port}: Address already in use" \
        in done.stderr, done.stderr
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


def test_root_refuses_a_state_dir_another_user_owns(tmp_path: Path) -> None:
    # `vmgated --config /etc/vmgated/vmgated.yaml` typed as root next to the service: the
    # journal and snapshot it wrote were root's 0640, and the service (its own user) then
    # failed to start on them until someone chowned them back.
    config = write_config(tmp_path, hep_port=free_port(),
                          metrics_port=free_port(socket.SOCK_STREAM))
    state = tmp_path / "var"
    state.mkdir()
    os.chown(state, SERVICE_UID, SERVICE_UID)
    done = run_daemon(config)
    assert done.returncode == 1, done.stderr
    assert f"cannot start: state dir {state} belongs to user {SERVICE_UID}, and this is " \
           "root" in done.stderr, done.stderr
    assert f"run vmgated as {SERVICE_UID}" in done.stderr
    assert list(state.iterdir()) == []  # refused before the lock, the ledger, the journal


def test_a_state_file_the_daemon_cannot_read_is_named_with_its_owner() -> None:
    top = Path(tempfile.mkdtemp(prefix="vmgated-owner-"))
    try:
        top.chmod(0o755)
        config = write_config(top, hep_port=free_port(),
                              metrics_port=free_port(socket.SOCK_STREAM))
        state = top / "var"
        (state / "dialogs").mkdir(parents=True)
        snapshot = state / "dialogs" / "snapshot"
        snapshot.write_text("{}")  # as root left it: root's, 0640
        snapshot.chmod(0o640)
        for path in (state, state / "dialogs"):
            os.chown(path, SERVICE_UID, SERVICE_UID)
        proc = as_user(SERVICE_UID, [], [sys.executable, "-m", "vmgated.main", "--config",
                                         str(config)], cwd=top, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=EXIT_WITHIN_S)
        assert proc.returncode == 1, err
        assert f"cannot start: [Errno 13] Permission denied: '{snapshot}' (owned by root:root, " \
               f"mode 0640; vmgated runs as {SERVICE_UID})" in err, err
    finally:
        shutil.rmtree(top)
