"""Kernel receive drops and queues of our UDP sockets, read from /proc/self/net/udp{,6}.

When the daemon cannot keep up, the kernel drops datagrams at the socket's receive buffer;
the only trace is the `drops` column of /proc/net/udp{,6}. Its `rx_queue` column is what waits
unread right now (bytes as the kernel charges them, ~2.3 KB per small datagram): a reload uses
it to give the event loop way while traffic queues up. Sockets are matched by inode (the exact
socket, `os.fstat(sock.fileno()).st_ino`) or, failing that, by local port.

The tables are read as /proc/self/net/..., not /proc/net/...: the two are the same file
(/proc/net is a symlink to self/net, the process's network namespace), but the shipped unit's
`ProcSubset=pid` mounts a /proc with only the process directories in it, where /proc/net does
not exist. Read through that path, every drop count was 0 under systemd, and the drop alert
could never fire.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "UdpDropCounter",
    "UdpSocketRow",
    "parse_udp_table",
    "read_tables",
    "socket_inode",
    "udp_drops",
    "udp_queued",
]

PROC_FILES = ("/proc/self/net/udp", "/proc/self/net/udp6")


class UdpSocketRow(NamedTuple):
    """One socket of /proc/net/udp{,6}: what we match on and its drop count."""

    local_port: int
    inode: int
    drops: int
    rx_queue: int = 0  # bytes waiting to be read


def parse_udp_table(text: str) -> Iterator[UdpSocketRow]:
    """Rows of one /proc/net/udp or udp6 text; malformed lines are skipped."""
    lines = text.splitlines()
    for line in lines[1:]:  # header line first
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if len(fields) < 13:
            continue
        try:
            port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].rsplit(":", 1)[1], 16)
            yield UdpSocketRow(port, int(fields[9]), int(fields[12]), rx_queue)
        except (IndexError, ValueError):
            continue


def read_tables(files: Iterable[str]) -> list[UdpSocketRow] | None:
    """Rows of every table that could be read; None when not one of them could.

    A missing udp6 is normal (no IPv6 in this kernel); none at all means the counts cannot
    be known (no /proc, or a sandbox hiding it), which the caller must not read as zero.
    """
    rows: list[UdpSocketRow] = []
    readable = False
    for path in files:
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read()
        except OSError:
            continue
        readable = True
        rows.extend(parse_udp_table(text))
    return rows if readable else None


def _rows(files: Iterable[str]) -> list[UdpSocketRow]:
    return read_tables(files) or []


def udp_drops(
    ports: Iterable[int] = (),
    *,
    inodes: Collection[int] = (),
    files: Iterable[str] = PROC_FILES,
) -> int:
    """Total kernel drops of the UDP sockets with these inodes or, without inodes, these ports."""
    if inodes:
        return sum(row.drops for row in _rows(files) if row.inode in inodes)
    wanted = set(ports)
    return sum(row.drops for row in _rows(files) if row.local_port in wanted)


def udp_queued(inodes: Collection[int], files: Iterable[str] = PROC_FILES) -> int:
    """Bytes waiting unread in the receive queues of the UDP sockets with these inodes."""
    return sum(row.rx_queue for row in _rows(files) if row.inode in inodes)


def socket_inode(sock: socket.socket) -> int:
    """The inode /proc/net/udp lists for this socket."""
    return os.fstat(sock.fileno()).st_ino


class UdpDropCounter:
    """A monotonic drop total over sockets that come and go (interface addresses change).

    /proc only shows open sockets; when a listener is closed its drops would vanish and the
    Prometheus counter would go backwards. This keeps the last count of every socket it saw
    and folds closed sockets into a retired base.
    """

    def __init__(self, files: Iterable[str] = PROC_FILES) -> None:
        self._files = tuple(files)
        self._last: dict[int, int] = {}
        self._retired = 0
        self.readable = True
        """Whether the last read found a table (False: the total is the last one known)."""

    def read(self, inodes: Collection[int]) -> int:
        """Drops so far over every socket ever passed in; call with the currently open inodes.

        When no table can be read, the last total is returned unchanged and `readable` is
        False: folding every socket into the retired base then (as if all had closed) would
        count their drops a second time at the next successful read.
        """
        rows = read_tables(self._files)
        self.readable = rows is not None
        if rows is None:
            return self._retired + sum(self._last.values())
        current = {row.inode: row.drops for row in rows if row.inode in inodes}
        for inode, drops in self._last.items():
            if inode not in current:
                self._retired += drops
        self._last = current
        return self._retired + sum(current.values())
