"""Issue 5 part 3: the sd_notify protocol of a real daemon, read from a real AF_UNIX socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sipcalls import (
    BASE,
    Call,
    Env,
    S,
    make_env,
    send,
    setup_messages,
    teardown_messages,
    to_hep,
    wait_for,
)


def drain(sock: socket.socket) -> list[str]:
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_reloading_watchdog_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        env = make_env(tmp_path, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "600000"})
        try:
            seen = drain(sock)
            assert any(m.split("\n")[0] == "READY=1" for m in seen), seen
            assert any("STATUS=" in m for m in seen)
            ready_at = next(i for i, m in enumerate(seen) if m.startswith("READY=1"))
            time.sleep(1.5)
            pings = [m for m in drain(sock) if m == "WATCHDOG=1"]
            # WatchdogSec=0.6 s: a ping every 0.3 s (about 5 here), not once per 1 s tick (1-2).
            assert len(pings) >= 3, pings
            assert env.daemon.proc is not None
            env.daemon.proc.send_signal(signal.SIGHUP)
            got: list[str] = []
            wait_for(lambda: got.extend(drain(sock)) or any(
                m.startswith("READY=1") for m in got))
            states = [m.split("\n")[0] for m in got if m != "WATCHDOG=1"]
            assert states[:2] == ["RELOADING=1", "READY=1"], got
            reloading = next(m for m in got if m.startswith("RELOADING=1"))
            assert "\nMONOTONIC_USEC=" in reloading  # Type=notify-reload (systemd >= 253)
            assert ready_at >= 0
            assert env.daemon.stop() == 0
            final = [m for m in drain(sock) if m != "WATCHDOG=1"]
            assert final == ["STOPPING=1"], final
        finally:
            env.daemon.stop()


# Runs the daemon as systemd does with socket activation: the socket on fd 3, $LISTEN_FDS=1,
# $LISTEN_PID = the daemon's own pid (set after fork, kept across exec).
_ACTIVATED = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='hep')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'vmgated.main', '--config', sys.argv[2]])\n"
)


def start_activated(env: Env, held: socket.socket) -> None:
    with open(env.daemon.log, "ab") as log:
        env.daemon.proc = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATED, str(held.fileno()), str(env.config)],
            cwd=env.dir, stdout=log, stderr=subprocess.STDOUT, env=env.daemon.env,
            pass_fds=(held.fileno(),),
        )  # fmt: skip
    wait_for(lambda: env.ctl("status", check=False).returncode == 0, timeout=30)


def test_socket_activation_keeps_what_arrives_while_the_daemon_is_killed(tmp_path: Path) -> None:
    env = make_env(tmp_path, start=False)
    c = Call("activated-1", answer=BASE + 2 * S, end=BASE + 32 * S)
    # The test holds the socket as systemd would: it outlives every daemon process.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", env.hep_port))
        try:
            start_activated(env, held)
            assert f"hep udp 127.0.0.1:{env.hep_port}: socket from systemd" in env.daemon.logs()
            send(env.hep_port, to_hep(setup_messages(c), c.capture_id))
            wait_for(lambda: env.ctl_json("status")["active_calls"] == 1)
            env.daemon.kill9()
            # No vmgated runs now. Without socket activation these would be refused and the
            # call would stay open until max_duration.
            send(env.hep_port, to_hep(teardown_messages(c), c.capture_id))
            start_activated(env, held)
            (billed,) = env.wait_calls(1)
            assert (billed["call_id"], billed["billsec"]) == ("activated-1", 30)
            assert env.ctl_json("status")["active_calls"] == 0
        finally:
            env.daemon.stop()


def test_listen_sockets_takes_only_what_systemd_passed_to_this_pid() -> None:
    code = (
        "import os, socket\n"
        "from vmgated import systemd\n"
        "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(('127.0.0.1', 0))\n"
        "os.dup2(udp.fileno(), 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid() + 1), LISTEN_FDS='1')\n"
        "assert systemd.listen_sockets() == []  # another process's sockets\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "(got,) = systemd.listen_sockets()\n"
        "assert got.fileno() == 3 and got.getsockname() == udp.getsockname()\n"
        "assert 'LISTEN_FDS' not in os.environ and 'LISTEN_PID' not in os.environ\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_under_the_journal_each_log_line_carries_its_priority(tmp_path: Path) -> None:
    """journald files a service's stderr lines at one level unless they start with `<N>`;
    the daemon knows its stderr is the journal's stream by $JOURNAL_STREAM (dev:inode)."""
    from tests.e2e.daemon import free_port, write_config

    config = write_config(tmp_path, hep_port=free_port(),
                          metrics_port=free_port(socket.SOCK_STREAM))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "ledger.db").write_bytes(b"not a database" * 10)  # an error to log
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with os.fdopen(read_end, "rb") as reader:
        proc = subprocess.Popen([sys.executable, "-m", "vmgated.main", "--config", str(config)],
                                cwd=tmp_path, stderr=write_end, env=env)
        os.close(write_end)
        assert proc.wait(timeout=30) == 1
        lines = reader.read().decode().splitlines()
    assert any(line.startswith("<3>ERROR vmgated: cannot start: ledger ") for line in lines), lines
    assert all(line[:1] == "<" and line[2:3] == ">" for line in lines), lines
