"""UDP listeners for the HEP and CDR inputs: large buffers, source allow-list, batched delivery.

Datagrams are handed to the pipeline in batches: every datagram the loop read in one tick is
delivered by one `on_batch` call, so per-packet Python overhead stays in one tight loop here.
Drops decided here (source not allowed, oversized) are counted in `Counters.packets` under the
listener's input name and logged at most every `LOG_EVERY` seconds.

Receive path choice (bench/udp.py, 2026-11-22, 2-core sandbox, 200k datagrams of 800 bytes
drained by uvloop from a buffer a second process pre-filled; see bench/README.md "UDP receive"):
asyncio-dgram `await recv()` 253k/s, raw `asyncio.DatagramProtocol` 458k/s (+81%), this
listener (protocol + per-tick batch + allow-list) 469k/s, blocking `recvfrom` baseline 410k/s.
asyncio-dgram pays a queue put, a future and a coroutine resume per datagram; the difference
is far over the 10% bar, so the listener uses the raw protocol (asyncio-dgram stays a
dependency of SPEC §2 but is not on this path).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from sip.call import Addr
from vmgated.logpace import LogPace
from vmgated.metrics import DROP_OVERSIZED, DROP_SOURCE, Counters
from vmgated.procnet import socket_inode
from vmgated.sources import MAX_UDP_PAYLOAD, IPNetwork, SourceFilter

__all__ = [
    "DEFAULT_RCVBUF",
    "MAX_UDP_PAYLOAD",
    "Batch",
    "IPNetwork",
    "InterfaceListeners",
    "UdpListener",
]

log = logging.getLogger(__name__)

Batch = list[tuple[bytes, Addr]]

DEFAULT_RCVBUF = 32 * 1024 * 1024
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class _Protocol(asyncio.DatagramProtocol):
    __slots__ = ("batch", "flush", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        self.loop = loop
        self.flush = flush
        self.batch: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        batch = self.batch
        batch.append((data, addr))
        if len(batch) == 1:
            # Runs after the loop finished reading this tick's datagrams: one call per batch.
            self.loop.call_soon(self.flush)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp listener: %s", exc)  # ICMP errors for a receive-only socket: harmless


class UdpListener:
    """One bound UDP socket delivering allowed datagrams to `on_batch` in per-tick batches.

    `allowed`: None accepts every source; a sequence (even empty) accepts only sources inside
    one of its networks (IPv4-mapped IPv6 sources are matched as IPv4). `on_batch` runs on
    the event loop; it must not block, and an exception it raises is logged, never fatal.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_batch: Callable[[Batch], None],
        *,
        input_name: str = "hep",
        counters: Counters | None = None,
        allowed: Sequence[IPNetwork] | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        max_datagram: int = MAX_UDP_PAYLOAD,
    ) -> None:
        self.host = host
        self.port = port
        self.on_batch = on_batch
        self.input_name = input_name
        self.counters = counters if counters is not None else Counters()
        self.sources = SourceFilter(allowed, max_datagram)
        self.rcvbuf = rcvbuf
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._sock: socket.socket | None = None
        self.drops = SourceDrops(self.counters, input_name)

    @property
    def sockname(self) -> Addr:
        """(host, port) actually bound; port 0 resolves to the kernel's choice."""
        assert self._sock is not None, "start() first"
        name = self._sock.getsockname()
        return (name[0], name[1])

    @property
    def bound_socket(self) -> socket.socket:
        """The bound socket (for the ingest process, which reads it instead of this)."""
        assert self._sock is not None, "bind() first"
        return self._sock

    @property
    def inode(self) -> int:
        """The socket's inode, to find its kernel drop count in /proc/self/net/udp{,6}."""
        assert self._sock is not None, "start() first"
        return socket_inode(self._sock)

    @property
    def started(self) -> bool:
        """True while the socket is bound."""
        return self._sock is not None

    def describe(self) -> str:
        """`hep udp 127.0.0.1:9060` for status output."""
        where = format_addr(self.sockname) if self._sock is not None else f"{self.host}:{self.port}"
        return f"{self.input_name} udp {where}"

    @property
    def effective_rcvbuf(self) -> int:
        """SO_RCVBUF as the kernel granted it (Linux reports twice the usable size)."""
        assert self._sock is not None, "start() first"
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    async def bind(self, inherited: list[socket.socket] | None = None) -> None:
        """Bind the socket without reading it; OSError (address in use...) goes to the caller.

        From here on the kernel queues datagrams in the socket's receive buffer, so the
        daemon binds before it recovers its state and starts reading after: what arrives
        during a restart's recovery waits instead of being refused (ICMP port unreachable).
        A socket of `inherited` (socket activation) bound to this address is taken from the
        list and used instead of a new one.
        """
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        for i, given in enumerate(inherited or ()):
            if given.family == family and given.getsockname()[:2] == sockaddr[:2]:
                sock = (inherited or []).pop(i)
                self._set_rcvbuf(sock)
                sock.setblocking(False)
                log.info("%s udp %s:%s: socket from systemd", self.input_name, self.host,
                         self.port)
                break
        else:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self._set_rcvbuf(sock)
                sock.bind(sockaddr)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                # "Address already in use" alone does not say which of the sockets it was.
                raise OSError(exc.errno, f"{self.input_name} udp {self.host}:{self.port}: "
                              f"{exc.strerror}") from exc
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        self.sources.v6 = family == socket.AF_INET6

    async def start(self) -> None:
        """Bind the socket (unless `bind` did) and start receiving."""
        await self.bind()
        sock = self._sock
        assert sock is not None
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        protocol = _Protocol(loop, self._flush)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            self._sock = None
            raise
        self._protocol, self._transport = protocol, transport
        log.info("listening for %s on udp %s (rcvbuf %d)", self.input_name,
                 format_addr(self.sockname), self.effective_rcvbuf)

    def stop(self) -> None:
        """Close the socket; datagrams already read this tick are still delivered."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        elif self._sock is not None:
            self._sock.close()  # bound, never started: no transport owns it
        self._sock = None

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        # Raise, never lower: a socket from systemd may come with a larger `ReceiveBuffer=`,
        # sized for restarts (Linux reports twice the usable size).
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 >= self.rcvbuf:
            return
        try:
            # Root (or CAP_NET_ADMIN) may exceed net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if granted < self.rcvbuf:
            log.warning("udp %s: receive buffer %d bytes instead of %d; raise the sysctl "
                        "net.core.rmem_max to avoid kernel drops under bursts",
                        self.input_name, granted, self.rcvbuf)

    def _flush(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        batch, protocol.batch = protocol.batch, []
        if not self.sources.passes_all:
            batch = self._filter(batch)
            if not batch:
                return
        try:
            self.on_batch(batch)
        except Exception:
            log.exception("%s pipeline failed on a batch of %d datagrams; continuing",
                          self.input_name, len(batch))

    def _filter(self, batch: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        kept, source, oversized, dropped_from = self.sources.filter(batch)
        if source or oversized:
            self.drops.count(source, oversized, dropped_from, format_addr(self.sockname))
        return kept


class SourceDrops:
    """Counts what a `SourceFilter` dropped in `Counters.packets` under one input name, and
    logs it: the first drop of each reason at once, later ones summed into at most one line
    per reason every LOG_EVERY seconds (for the daemon's listeners and for what the ingest
    process's filters report)."""

    def __init__(self, counters: Counters, input_name: str) -> None:
        self.counters = counters
        self.input_name = input_name
        self._unlogged: dict[str, int] = {}
        self._log = LogPace()

    def count(self, source: int, oversized: int, dropped_from: str | None, where: str) -> None:
        """Add one batch's drops; `where` names the socket(s) in the log line."""
        packets = self.counters.packets
        unlogged = self._unlogged
        for reason, n in ((DROP_SOURCE, source), (DROP_OVERSIZED, oversized)):
            if not n:
                continue
            packets[(self.input_name, reason)] += n
            total = unlogged[reason] = unlogged.get(reason, 0) + n
            if self._log.due(reason):
                log.warning("udp %s %s: dropped %d %s (e.g. from %s); counted in "
                            "vmgated_packets_total", self.input_name, where, total, reason,
                            dropped_from)
                unlogged[reason] = 0


def format_addr(addr: Addr) -> str:
    """`127.0.0.1:9060`, `[::1]:9060`."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class InterfaceListeners:
    """UDP listeners on every address of a network interface, following address changes.

    `make(host)` builds the `UdpListener` for one address (same port, callback and options for
    all). Addresses come from netlink (`vmgated.netwatch`); a DHCP renewal or a failover move
    binds the new address and closes the listener of the removed one.
    """

    def __init__(self, ifname: str, make: Callable[[str], UdpListener]) -> None:
        self.ifname = ifname
        self.make = make
        self.listeners: dict[str, UdpListener] = {}
        self._watch: Any = None
        self._wanted: frozenset[str] = frozenset()
        self._reconciling: asyncio.Task[None] | None = None
        self._bound = False

    @property
    def addresses(self) -> frozenset[str]:
        """Addresses currently bound."""
        return frozenset(self.listeners)

    def describe(self) -> str:
        """`interface eth1: hep udp 10.0.0.5:9060, ...` for status output."""
        bound = ", ".join(item.describe() for item in self.listeners.values()) or "no address"
        return f"interface {self.ifname}: {bound}"

    async def bind(self, inherited: list[socket.socket] | None = None) -> None:
        """Bind the interface's current addresses without reading them (see UdpListener.bind)."""
        from vmgated.netwatch import resolve

        # pyroute2's synchronous API cannot run inside a running loop: resolve in a thread.
        addresses = await asyncio.to_thread(resolve, self.ifname)
        if not addresses:
            log.warning("interface %s has no usable address yet; waiting for one", self.ifname)
        self._wanted = addresses
        self._bound = True
        for host in sorted(addresses - self.listeners.keys()):
            await self._open(host, inherited, read=False)

    async def start(self) -> None:
        """Start reading what `bind` bound (binding first if it was not called), then follow
        the interface's address changes from a netlink thread."""
        from vmgated.netwatch import InterfaceWatch, resolve

        if not self._bound:
            await self.bind()
        for listener in self.listeners.values():
            await listener.start()
        # Recovery between `bind` and here can take seconds: apply what came or went since.
        self._wanted = await asyncio.to_thread(resolve, self.ifname)
        await self._reconcile()
        self._watch = InterfaceWatch(self.ifname, self._on_change)
        self._watch.start()

    def stop(self) -> None:
        """Stop following and close every listener."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._reconciling is not None:
            self._reconciling.cancel()
        for listener in self.listeners.values():
            listener.stop()
        self.listeners.clear()

    def _on_change(self, addresses: frozenset[str]) -> None:
        self._wanted = addresses
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.get_running_loop().create_task(self._reconcile())
        # else: the running reconcile loops until it has applied the latest `_wanted`.

    async def _reconcile(self) -> None:
        while True:
            wanted = self._wanted
            for host in sorted(self.listeners.keys() - wanted):
                log.info("interface %s lost %s: closing its listener", self.ifname, host)
                self.listeners.pop(host).stop()
            await asyncio.sleep(0)  # uvloop closes sockets on the next iteration: free ports
            for host in sorted(wanted - self.listeners.keys()):
                await self._open(host, None, read=True)
            if wanted is self._wanted:
                return

    async def _open(self, host: str, inherited: list[socket.socket] | None, read: bool) -> None:
        """Bind (and with `read`, start) a listener on `host`; a failure is logged, not raised:
        the address may already be gone again, and the next netlink event retries."""
        listener = self.make(host)
        try:
            await listener.bind(inherited)
            if read:
                await listener.start()
        except OSError as exc:
            listener.stop()
            log.warning("interface %s: cannot listen on %s: %s", self.ifname, host, exc)
            return
        self.listeners[host] = listener
