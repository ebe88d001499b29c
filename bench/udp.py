"""UDP receive throughput: asyncio-dgram vs raw DatagramProtocol vs vmgated's listener on uvloop.

Baseline: a blocking `recvfrom` loop on the same socket, measured in the same run.

Two modes, both with a second process sending:
  drain  the sender fills the receiver's (large) socket buffer first, then the receiver
         drains it: pure receive-path cost, no competition with the sender for the 2 cores.
  live   sender and receiver run together for the whole run (sender-limited on small
         machines; loss shows when the receiver is the slower one).

    /work/venv/bin/python bench/udp.py [--packets 200000] [--size 800] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import asyncio_dgram
import uvloop

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vmgated.listeners import UdpListener
from vmgated.procnet import socket_inode, udp_drops

IDLE = 0.5  # seconds without a datagram that ends a receive run


def send(port: int, count: int, size: int) -> None:
    """Sender process: `count` datagrams of `size` bytes to 127.0.0.1:port as fast as it can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    payload = b"HEP3" + b"x" * (size - 4)
    dest = ("127.0.0.1", port)
    sendto = sock.sendto
    for _ in range(count):
        while True:
            try:
                sendto(payload, dest)
                break
            except (BlockingIOError, ConnectionRefusedError):  # ENOBUFS-like backpressure
                time.sleep(0)


def receiver_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 30)  # SO_RCVBUFFORCE, room for the drain mode
    sock.bind(("127.0.0.1", 0))
    return sock


def spawn_sender(port: int, count: int, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--send", str(port), str(count),
                             str(size)])


def run_blocking(sock: socket.socket, count: int) -> tuple[int, float]:
    sock.settimeout(IDLE)
    recv = sock.recvfrom
    got = 0
    first = last = 0.0
    try:
        recv(65536)
        got, first = 1, time.perf_counter()
        while got < count:
            recv(65536)
            got += 1
    except TimeoutError:
        pass
    last = time.perf_counter()
    return got, last - first


async def _async_run(start: Callable[[Callable[[int], None]], object], count: int
                     ) -> tuple[int, float]:
    state = {"got": 0, "first": 0.0, "last": 0.0}
    done = asyncio.get_running_loop().create_future()

    def seen(n: int) -> None:
        if not state["got"]:
            state["first"] = time.perf_counter()
        state["got"] += n
        state["last"] = time.perf_counter()
        if state["got"] >= count and not done.done():
            done.set_result(None)

    await start(seen)  # type: ignore[misc]
    while not done.done():
        before = state["got"]
        await asyncio.wait([done], timeout=IDLE)
        if state["got"] == before and state["got"] > 0:
            break
    return int(state["got"]), state["last"] - state["first"]


def run_dgram(sock: socket.socket, count: int) -> tuple[int, float]:
    async def main() -> tuple[int, float]:
        stream = await asyncio_dgram.from_socket(sock)

        async def pump(seen: Callable[[int], None]) -> None:
            try:
                while True:
                    await stream.recv()
                    seen(1)
            except asyncio_dgram.TransportClosed:
                pass

        async def start(seen: Callable[[int], None]) -> None:
            asyncio.get_running_loop().create_task(pump(seen))

        result = await _async_run(start, count)
        stream.close()
        return result

    return uvloop.run(main())


def run_protocol(sock: socket.socket, count: int) -> tuple[int, float]:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        transports = []

        async def start(seen: Callable[[int], None]) -> None:
            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    seen(1)

            transport, _ = await loop.create_datagram_endpoint(Proto, sock=sock)
            transports.append(transport)

        result = await _async_run(start, count)
        transports[0].close()
        return result

    return uvloop.run(main())


def run_listener(sock: socket.socket, count: int) -> tuple[int, float]:
    import ipaddress

    async def main() -> tuple[int, float]:
        listener = UdpListener("127.0.0.1", 0, lambda batch: None,
                               allowed=[ipaddress.ip_network("127.0.0.0/8")])

        async def start(seen: Callable[[int], None]) -> None:
            listener.on_batch = lambda batch: seen(len(batch))
            # Same pre-filled socket for every variant: adopt it instead of binding a new one.
            loop = asyncio.get_running_loop()
            from vmgated import listeners as mod

            protocol = mod._Protocol(loop, listener._flush)
            transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
            listener._sock, listener._protocol, listener._transport = sock, protocol, transport

        result = await _async_run(start, count)
        listener.stop()
        return result

    return uvloop.run(main())


VARIANTS: dict[str, Callable[[socket.socket, int], tuple[int, float]]] = {
    "blocking recvfrom loop (baseline)": run_blocking,
    "asyncio-dgram recv() on uvloop": run_dgram,
    "DatagramProtocol on uvloop": run_protocol,
    "vmgated UdpListener on uvloop": run_listener,
}


def measure(mode: str, name: str, count: int, size: int) -> tuple[float, int, int]:
    sock = receiver_socket()
    port = sock.getsockname()[1]
    inode = socket_inode(sock)
    sender = spawn_sender(port, count, size)
    if mode == "drain":
        sender.wait()
    got, elapsed = VARIANTS[name](sock, count)
    sender.wait()
    drops = udp_drops(inodes={inode})
    sock.close()
    return (got / elapsed if elapsed > 0 else 0.0), got, drops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="drain,live")
    parser.add_argument("--send", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(*args.send)
        return
    print(f"{args.packets} datagrams of {args.size} bytes, best of {args.rounds}, "
          f"python {sys.version.split()[0]}, uvloop {uvloop.__version__}")
    for mode in args.modes.split(","):
        print(f"\nmode {mode}:")
        base = 0.0
        for name in VARIANTS:
            best = max((measure(mode, name, args.packets, args.size)
                        for _ in range(args.rounds)), key=lambda r: r[0])
            pps, got, drops = best
            base = base or pps
            print(f"  {name:36s} {pps:10,.0f} packets/s  ({pps / base:5.0%} of baseline; "
                  f"received {got}, kernel drops {drops})")


if __name__ == "__main__":
    main()
