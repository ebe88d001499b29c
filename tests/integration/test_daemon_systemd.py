"""Issue 5 part 3: the sd_notify protocol of a real daemon, read from a real AF_UNIX socket."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from sipcalls import make_env, wait_for


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
