"""SPEC §3.1 listeners and §3.3 bad input on real UDP sockets; interfaces followed via netlink."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import uvloop

from vmgated.listeners import Batch, InterfaceListeners, UdpListener
from vmgated.metrics import Counters
from vmgated.netwatch import resolve
from vmgated.procnet import socket_inode, udp_drops, udp_queued

T = TypeVar("T")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; absent from the socket module


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def sender(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def test_a_bound_listener_keeps_what_arrives_until_it_starts_reading() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        listener = UdpListener("127.0.0.1", 0, batches.append)
        await listener.bind()
        with sender() as s:
            for i in range(50):
                s.sendto(b"early %d" % i, listener.sockname)
            await asyncio.sleep(0.2)
            assert batches == []  # bound, not read: the kernel holds them
            await listener.start()
            await until(lambda: sum(map(len, batches)) == 50)
        listener.stop()
        assert [data for b in batches for data, _ in b] == [b"early %d" % i for i in range(50)]

    run(main())


def test_stopping_a_listener_that_was_only_bound_frees_its_port() -> None:
    async def main() -> None:
        listener = UdpListener("127.0.0.1", 0, lambda batch: None)
        await listener.bind()
        port = listener.sockname[1]
        listener.stop()
        again = UdpListener("127.0.0.1", port, lambda batch: None)
        await again.start()  # would raise EADDRINUSE if the first socket were still open
        again.stop()

    run(main())


def test_datagrams_arrive_in_batches_with_their_source() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        listener = UdpListener("127.0.0.1", 0, batches.append)
        await listener.start()
        with sender() as s:
            for i in range(200):
                s.sendto(b"HEP3 %d" % i, listener.sockname)
            src = s.getsockname()
            await until(lambda: sum(map(len, batches)) == 200)
        listener.stop()
        flat = [item for batch in batches for item in batch]
        assert [data for data, _ in flat] == [b"HEP3 %d" % i for i in range(200)]
        assert {addr for _, addr in flat} == {src}
        assert len(batches) < 200  # one pipeline call per loop tick, not per datagram

    run(main())


def test_unknown_sources_are_dropped_and_counted() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        counters = Counters()
        listener = UdpListener("127.0.0.1", 0, batches.append, input_name="cdr",
                               counters=counters,
                               allowed=[ipaddress.ip_network("127.0.0.2/32")])
        await listener.start()
        with sender("127.0.0.1") as stranger, sender("127.0.0.2") as friend:
            for _ in range(5):
                stranger.sendto(b"{}", listener.sockname)
            friend.sendto(b'{"call_id": "a"}', listener.sockname)
            await until(lambda: sum(map(len, batches)) == 1
                        and counters.packets[("cdr", "source")] == 5)
            assert batches[0][0] == (b'{"call_id": "a"}', friend.getsockname())
        listener.stop()

    run(main())


def test_empty_allow_list_drops_everything() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        counters = Counters()
        listener = UdpListener("127.0.0.1", 0, batches.append, counters=counters, allowed=[])
        await listener.start()
        with sender() as s:
            s.sendto(b"x", listener.sockname)
            await until(lambda: counters.packets[("hep", "source")] == 1)
        listener.stop()
        assert batches == []

    run(main())


def test_oversized_datagrams_are_dropped_and_counted() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        counters = Counters()
        listener = UdpListener("127.0.0.1", 0, batches.append, counters=counters,
                               max_datagram=1000)
        await listener.start()
        with sender() as s:
            s.sendto(b"x" * 1001, listener.sockname)
            s.sendto(b"y" * 1000, listener.sockname)
            await until(lambda: counters.packets[("hep", "oversized")] == 1
                        and sum(map(len, batches)) == 1)
        listener.stop()
        assert batches[0][0][0] == b"y" * 1000

    run(main())


def test_ipv6_listener_reports_plain_addr() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        listener = UdpListener("::1", 0, batches.append,
                               allowed=[ipaddress.ip_network("::1/128")])
        await listener.start()
        with sender("::1", socket.AF_INET6) as s:
            s.sendto(b"v6", listener.sockname)
            await until(lambda: bool(batches))
            assert batches[0] == [(b"v6", ("::1", s.getsockname()[1]))]
        listener.stop()

    run(main())


def test_dual_stack_matches_ipv4_mapped_sources_against_ipv4_networks() -> None:
    async def main() -> None:
        batches: list[Batch] = []
        listener = UdpListener("::", 0, batches.append,
                               allowed=[ipaddress.ip_network("127.0.0.0/8")])
        await listener.start()
        with sender() as s:
            s.sendto(b"v4 via v6", ("127.0.0.1", listener.sockname[1]))
            await until(lambda: bool(batches))
            assert batches[0][0][1] == ("::ffff:127.0.0.1", s.getsockname()[1])
        listener.stop()

    run(main())


def test_receive_buffer_is_large() -> None:
    async def main() -> None:
        listener = UdpListener("127.0.0.1", 0, lambda batch: None, rcvbuf=32 << 20)
        await listener.start()
        # Linux reports twice the requested size; as root SO_RCVBUFFORCE beats rmem_max.
        assert listener.effective_rcvbuf >= 2 * (32 << 20)
        listener.stop()

    run(main())


def test_a_passed_socket_keeps_a_larger_buffer_and_a_smaller_one_is_raised() -> None:
    """systemd's `ReceiveBuffer=` may be sized for restarts: adoption must not shrink it."""

    async def main() -> None:
        granted = []
        for size in (128 << 20, 1 << 20):
            passed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            passed.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root, as systemd is
            passed.bind(("127.0.0.1", 0))
            listener = UdpListener("127.0.0.1", passed.getsockname()[1], lambda b: None,
                                   rcvbuf=32 << 20)
            await listener.bind([passed])
            granted.append(listener.effective_rcvbuf)
            listener.stop()
        assert granted == [2 * (128 << 20), 2 * (32 << 20)]

    run(main())


def test_a_failing_pipeline_never_stops_the_listener() -> None:
    async def main() -> None:
        seen: list[Batch] = []

        def on_batch(batch: Batch) -> None:
            seen.append(batch)
            if len(seen) == 1:
                raise ValueError("decoder bug")

        listener = UdpListener("127.0.0.1", 0, on_batch)
        await listener.start()
        with sender() as s:
            s.sendto(b"first", listener.sockname)
            await until(lambda: len(seen) == 1)
            s.sendto(b"second", listener.sockname)
            await until(lambda: len(seen) == 2)
        listener.stop()
        assert seen[1][0][0] == b"second"

    run(main())


def test_busy_port_raises_to_the_caller() -> None:
    async def main() -> None:
        first = UdpListener("127.0.0.1", 0, lambda batch: None)
        await first.start()
        second = UdpListener("127.0.0.1", first.sockname[1], lambda batch: None,
                             input_name="cdr")
        with pytest.raises(OSError) as info:
            await second.start()
        # Which socket it was: the daemon has several, the kernel's words name none.
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value).endswith(f"cdr udp 127.0.0.1:{first.sockname[1]}: Address "
                                        "already in use")
        first.stop()

    run(main())


def test_kernel_drops_on_our_socket_are_read_from_proc() -> None:
    async def main() -> None:
        listener = UdpListener("127.0.0.1", 0, lambda batch: None, rcvbuf=4096)
        await listener.start()
        port, inode = listener.sockname[1], listener.inode
        assert udp_drops([port]) == 0
        with sender() as s:
            for _ in range(500):  # the loop does not run meanwhile: the tiny buffer overflows
                s.sendto(b"z" * 1000, listener.sockname)
        by_inode = udp_drops(inodes={inode})
        assert by_inode > 0
        assert udp_drops([port]) == by_inode
        listener.stop()

    run(main())


def test_bytes_waiting_unread_are_read_from_proc() -> None:
    """What a reload's worker watches to give the loop way (vmgated.app._give_way)."""

    async def main() -> None:
        listener = UdpListener("127.0.0.1", 0, lambda batch: None)
        await listener.bind()  # bound, not reading: what is sent waits in the kernel
        inode = listener.inode
        assert udp_queued({inode}) == 0
        with sender() as s:
            for _ in range(100):
                s.sendto(b"q" * 650, listener.sockname)
            await until(lambda: udp_queued({inode}) >= 100 * 650)
        listener.stop()

    run(main())


# --- listeners that follow an interface ------------------------------------------------------

IFACE = "vmgtest0"
FOLLOW_PORT = 29061


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def test_interface() -> Iterator[str]:
    """A throw-away interface: `dummy` when the kernel has it, else an empty bridge."""
    _ip("link", "del", IFACE)
    for kind in ("dummy", "bridge"):
        if _ip("link", "add", IFACE, "type", kind).returncode == 0:
            break
    else:
        pytest.fail("cannot create a test interface (need root and dummy or bridge support)")
    try:
        assert _ip("link", "set", IFACE, "up").returncode == 0
        yield IFACE
    finally:
        _ip("link", "del", IFACE)


def _add(addr: str) -> None:
    extra = ["nodad"] if ":" in addr else []
    result = _ip("addr", "add", addr, "dev", IFACE, *extra)
    assert result.returncode == 0, result.stderr


def _delete(addr: str) -> None:
    result = _ip("addr", "del", addr, "dev", IFACE)
    assert result.returncode == 0, result.stderr


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_DGRAM)) as s:
        try:
            s.bind((host, FOLLOW_PORT))
        except OSError:
            return False
    return True


async def _round_trip(host: str, received: list[tuple[bytes, str]], payload: bytes) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (host, FOLLOW_PORT))
    await until(lambda: (payload, host) in received)


def _collecting(received: list[tuple[bytes, str]]) -> Callable[[str], UdpListener]:
    """A listener factory for InterfaceListeners that records (payload, listening host)."""

    def make(host: str) -> UdpListener:
        def on_batch(batch: Batch) -> None:
            received.extend((data, host) for data, _ in batch)

        return UdpListener(host, FOLLOW_PORT, on_batch)

    return make


def test_resolve_lists_bindable_addresses(test_interface: str) -> None:
    assert resolve(test_interface) == frozenset()
    _add("198.51.100.77/24")
    _add("fd00:77::1/64")
    assert resolve(test_interface) == {"198.51.100.77", "fd00:77::1"}  # no fe80:: link-local
    assert resolve("no-such-if0") == frozenset()


def test_interface_listeners_follow_address_changes(test_interface: str) -> None:
    async def main() -> None:
        received: list[tuple[bytes, str]] = []
        make = _collecting(received)

        _add("198.51.100.77/24")
        group = InterfaceListeners(test_interface, make)
        await group.start()
        try:
            assert group.addresses == {"198.51.100.77"}
            await _round_trip("198.51.100.77", received, b"before")

            # A DHCP renewal with a new address, then the old one removed.
            _add("203.0.113.78/24")
            await until(lambda: "203.0.113.78" in group.addresses)
            await _round_trip("203.0.113.78", received, b"renewed")
            _delete("198.51.100.77/24")
            await until(lambda: group.addresses == {"203.0.113.78"})

            # A failover moving an IPv6 address onto the interface.
            _add("fd00:77::1/64")
            await until(lambda: group.addresses == {"203.0.113.78", "fd00:77::1"})
            await _round_trip("fd00:77::1", received, b"v6")
        finally:
            group.stop()
        assert group.addresses == frozenset()
        # The closed listeners release their ports (uvloop closes at the next iteration).
        await until(lambda: _can_bind("203.0.113.78") and _can_bind("fd00:77::1"))

    run(main())


def test_interface_listeners_adopt_a_passed_socket_and_bind_later_addresses(
    test_interface: str,
) -> None:
    async def main() -> None:
        received: list[tuple[bytes, str]] = []
        make = _collecting(received)

        _add("198.51.100.77/24")
        # As systemd passes it: bound before the daemon, already holding a datagram.
        passed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        passed.bind(("198.51.100.77", FOLLOW_PORT))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"queued before start", ("198.51.100.77", FOLLOW_PORT))
        inherited = [passed]
        group = InterfaceListeners(test_interface, make)
        await group.bind(inherited)
        assert inherited == []  # taken, not copied
        await group.start()
        try:
            assert group.listeners["198.51.100.77"].inode == socket_inode(passed)
            await until(lambda: (b"queued before start", "198.51.100.77") in received)
            _add("203.0.113.78/24")
            await until(lambda: "203.0.113.78" in group.addresses)
            await _round_trip("203.0.113.78", received, b"later address")
        finally:
            group.stop()

    run(main())
