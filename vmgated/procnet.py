"""Kernel receive drops and queues of our UDP sockets, read from /proc/net/udp{,6}.

When the daemon cannot keep up, the kernel drops datagrams at the socket's receive buffer;
the only trace is the `drops` column of /proc/net/udp{,6}. Its `rx_queue` column is what waits
unread right now (bytes as the kernel charges them, ~2.3 KB per small datagram): a reload uses
it to give the event loop way while traffic queues up. Sockets are matched by inode (the exact
socket, `os.fstat(sock.fileno()).st_ino`) or, failing that, by local port.
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
    "socket_inode",
    "udp_drops",
    "udp_queued",
]

PROC_FILES = ("/proc/net/udp", "/proc/net/udp6")


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


def _rows(files: Iterable[str]) -> Iterator[UdpSocketRow]:
    for path in files:
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read()
        except OSError:
            continue  # no IPv6 in this kernel, or /proc not mounted
        yield from parse_udp_table(text)


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

    def read(self, inodes: Collection[int]) -> int:
        """Drops so far over every socket ever passed in; call with the currently open inodes."""
        current = {row.inode: row.drops for row in _rows(self._files) if row.inode in inodes}
        for inode, drops in self._last.items():
            if inode not in current:
                self._retired += drops
        self._last = current
        return self._retired + sum(current.values())
