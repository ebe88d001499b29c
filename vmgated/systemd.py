"""The systemd service protocol without libsystemd: readiness, reload, stop, status, watchdog,
and the sockets of socket activation.

Same wire format as systemd's `notify-selfcontained-example.py`: one datagram of
`KEY=value` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` for
the abstract namespace). Every call is a no-op returning False when the daemon does not run
under systemd (or the socket is gone), so the daemon calls them unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = [
    "JournalFormatter",
    "journal_stderr",
    "listen_sockets",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_ping",
]


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets are fds 3, 4, ...


def listen_sockets() -> list[socket.socket]:
    """The datagram sockets systemd passed to this process (socket activation), in order.

    Per sd_listen_fds(3): `$LISTEN_FDS` sockets from fd 3 on, meant for us only if
    `$LISTEN_PID` is our pid; the variables are then removed so that no child takes them
    for its own. Why the daemon wants this: the socket belongs to systemd, not to the
    process, so what arrives while vmgated is killed and restarted (`Restart=on-failure`)
    queues in the socket's buffer instead of being lost with the process. Non-UDP fds are
    left alone (and not returned).
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    out: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket
        if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.detach()  # not ours to close
            continue
        os.set_inheritable(fd, False)
        out.append(sock)
    return out


def _notify_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    return None  # unset, or a vsock address (only used by VMs; not our case)


def notify(state: str) -> bool:
    """Send one `KEY=value[\\nKEY=value...]` state to systemd; True when it was delivered."""
    address = _notify_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        # systemd gone or socket unreachable: the daemon keeps running, it just is not managed.
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (`Type=notify`), optionally with a status line."""
    state = "READY=1"
    if status_text:
        state += f"\nSTATUS={_one_line(status_text)}"
    return notify(state)


def reloading() -> bool:
    """Tell systemd a reload began; send `ready()` when it is done.

    MONOTONIC_USEC is required by `Type=notify-reload` (systemd >= 253) to match the reload
    to the request; older systemd ignores it.
    """
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_us}")


def stopping() -> bool:
    """Tell systemd the daemon is shutting down (draining and flushing)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the free-form one-line status shown by `systemctl status`."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds when systemd expects pings from this process, else None.

    Ping at half this interval or more often (sd_watchdog_enabled(3)).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # the variable was meant for our parent, not for us
    return int(usec) / 1_000_000


def watchdog_ping() -> bool:
    """Tell systemd the daemon is alive (`WatchdogSec=`): the main loop is still turning."""
    return notify("WATCHDOG=1")


def journal_stderr() -> bool:
    """Whether stderr is connected to the journal (`$JOURNAL_STREAM` names its device:inode).

    Per systemd.exec(5): a service whose stderr systemd connected to journald gets this
    variable; checking the inode tells a redirected stderr (`vmgated ... 2>file` inside the
    unit, or a child) from the journal's own stream.
    """
    want = os.environ.get("JOURNAL_STREAM")
    if not want:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class JournalFormatter(logging.Formatter):
    """Log lines with sd-daemon(3) priority prefixes (`<3>` error, `<4>` warning, ...).

    Without them journald files every line of the service at one level (info), so
    `journalctl -u vmgated -p warning` showed nothing and errors were not marked. Every
    line of a message gets the prefix: journald stores each line as its own entry, and a
    traceback's lines belong to the error that printed it.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as the base formatter writes it, each line with its priority."""
        text = super().format(record)
        prefix = f"<{_priority(record.levelno)}>"
        return prefix + text.replace("\n", "\n" + prefix)


def _priority(levelno: int) -> int:
    for level, priority in _PRIORITY:
        if levelno >= level:
            return priority
    return 7  # debug
