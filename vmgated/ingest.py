"""The ingest process: reads the HEP sockets, journals, decodes and parses, hands over.

    python -m vmgated.ingest DIALOGS_DIR GEN PARENT_PID FD[,FD...]

Spawned by the daemon (`vmgated.ingestclient`) for the HEP listeners bound to an address; never
run by hand. The daemon binds the sockets and passes their descriptors.

Why a process: at SPEC §10's 60,000 HEP packets/s the daemon's event loop was the limit (0.94
to 0.99 of a core, 15.7 µs per packet, bench/README.md "End to end"). Receiving (~2.4 µs a
datagram), journalling (~1.3), HEP decoding (~1.2) and SIP parsing (~3.8) need no dialog
state, so they run here on the second core; the loop pays a frame's unpickling instead and
keeps the dialogs, rating and billing.

Nothing is lost: each batch is journalled (`ingest.<gen>`, `vmgated.journal.IngestJournal`)
before it is parsed and sent, and each frame says where in the journal its batch ends. The
daemon stores the position of the last frame it processed in each dialog snapshot; a restart
replays the ingest journals from there, and a daemon whose ingest process died replays them
from there before it starts another (which writes a new generation: the dead one's file may
end in a torn record).

Frames (`ledger.sinkclient.dump_frame`: u64 length, memo-less pickle of a tuple). On stdin,
from the daemon: `("settings", allowed_sources, hep_auth_key)` first, and again
on each reload; end of input is "stop" (every batch read is already sent). On stdout, one per
batch: a `Frame`, each parsed message in it as `(SipMessage fields as a plain tuple, ts_us,
src, dst, capture_id, correlation_id)` (a NamedTuple unpickles through its Python-level
constructor: once per frame is nothing, once per message was not). Dies with its parent
(PR_SET_PDEATHSIG); ignores SIGINT and SIGTERM (the daemon stops it in order).
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ledger.sink import die_with
from ledger.sinkclient import FRAME, dump_frame, widen_pipe
from vmgated.hepparse import Notice, Wire, parse_batch, stamp_batch
from vmgated.journal import HEP, IngestJournal
from vmgated.sources import IPNetwork, SourceFilter

log = logging.getLogger(__name__)

BATCH = 256  # datagrams read from one socket before they are journalled and sent
RECV_BYTES = 65536  # one more than any UDP payload: an oversized datagram is seen whole


class Frame(NamedTuple):
    """One batch as the daemon receives it."""

    gen: int  # the ingest journal generation and offset just past this batch
    offset: int
    received_us: int  # our clock when the batch was read
    parsed: list[Wire]
    notices: list[Notice]
    source: int  # datagrams dropped by the allow-list
    oversized: int
    dropped_from: str | None  # the host of one of those, for the log line
    unjournalled: int  # datagrams passed on although the journal could not write them
    journal_error: str | None


class Settings(NamedTuple):
    """What a reload can change here."""

    allowed: tuple[IPNetwork, ...] | None
    auth_key: bytes | None


class Ingest:
    """The read → journal → parse → send loop over some bound sockets."""

    def __init__(
        self, socks: Sequence[socket.socket], journal: IngestJournal, settings: Settings,
        out_fd: int,
    ) -> None:
        self.socks = list(socks)
        self.journal = journal
        self.out_fd = out_fd
        self.filters = [SourceFilter(None, v6=s.family == socket.AF_INET6) for s in self.socks]
        self.auth_key: bytes | None = None
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Take a reload's allow-list and auth key."""
        self.auth_key = settings.auth_key
        for filt in self.filters:
            filt.set_allowed(settings.allowed)

    def drain(self, index: int) -> None:
        """Read one batch (up to BATCH datagrams) from socket `index` and handle it."""
        recv = self.socks[index].recvfrom
        batch: list[tuple[bytes, Any]] = []
        append = batch.append
        try:
            for _ in range(BATCH):
                append(recv(RECV_BYTES))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # an ICMP error reported on the socket: harmless for a reader
            log.debug("udp read: %s", exc)
        if batch:
            self.handle(batch, self.filters[index])

    def handle(self, batch: list[tuple[bytes, Any]], filt: SourceFilter) -> None:
        """Filter, stamp, journal, parse and send one batch."""
        received = time.time_ns() // 1000
        source = oversized = 0
        dropped_from = None
        if not filt.passes_all:
            batch, source, oversized, dropped_from = filt.filter(batch)
        stamp_batch(batch, received)
        unjournalled, error = 0, None
        try:
            self.journal.append(HEP, batch)
        except OSError as exc:
            # Parsed and billed anyway (the daemon says so and counts them): dropping what
            # cannot be made crash-safe would lose for certain what a crash only might.
            unjournalled, error = len(batch), str(exc)
        parsed, notices = parse_batch(batch, self.auth_key, received)
        wire: list[Wire] = [(tuple(msg), ts_us, src, dst, capture_id, correlation_id)
                            for msg, ts_us, src, dst, capture_id, correlation_id in parsed]
        gen, offset = self.journal.position
        write_all(self.out_fd, dump_frame(Frame(gen, offset, received, wire, notices, source,
                                                oversized, dropped_from, unjournalled, error)))


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a blocking descriptor (a pipe write may be cut by a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> tuple[Any, ...] | None:
    """The next frame from the daemon on descriptor `fd`, or None at end of input.

    Unbuffered reads: a buffered reader could take in the next frame too, and the selector,
    which watches the descriptor, would not report it.
    """
    head = _read_exactly(fd, FRAME.size)
    if head is None:
        return None
    (size,) = FRAME.unpack(head)
    body = _read_exactly(fd, size)
    if body is None:
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def serve(directory: Path, gen: int, fds: Sequence[int], in_fd: int, out_fd: int) -> int:
    """Run until end of input; the exit status."""
    first = read_frame(in_fd)
    if first is None or first[0] != "settings":
        return 0  # the daemon went away before it said anything
    socks = [socket.socket(fileno=fd) for fd in fds]
    for sock in socks:
        sock.setblocking(False)
    widen_pipe(out_fd)
    ingest = Ingest(socks, IngestJournal(directory, gen), Settings(*first[1:]), out_fd)
    with selectors.DefaultSelector() as sel:
        sel.register(in_fd, selectors.EVENT_READ, -1)
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ, i)
        while True:
            for key, _ in sel.select():
                if key.data >= 0:
                    # One batch per ready socket per round: a busy socket cannot starve
                    # another (the selector reports it again at once).
                    ingest.drain(key.data)
                    continue
                message = read_frame(in_fd)
                if message is None:
                    ingest.journal.close()
                    return 0
                if message[0] == "settings":
                    ingest.apply(Settings(*message[1:]))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m vmgated.ingest DIALOGS_DIR GEN PARENT_PID FD[,FD...]`."""
    directory, gen, parent, fds = argv if argv is not None else sys.argv[1:]
    die_with(int(parent))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="vmgated ingest process: %(message)s")
    sys.exit(serve(Path(directory), int(gen), [int(fd) for fd in fds.split(",")],
                   sys.stdin.fileno(), sys.stdout.fileno()))


if __name__ == "__main__":
    # Through the module, not this `__main__` copy of it: the frames pickle `Frame` by its
    # module's name, which the daemon must find as `vmgated.ingest`.
    from vmgated.ingest import main as _main

    _main()
