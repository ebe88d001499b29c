"""Dialog state that survives `kill -9`: a snapshot every second plus a journal of raw input.

The tracker's in-memory dialogs are the only state that is not in the ledger. Persisting them
only once a second would lose the last second's answers on a crash, so every input datagram is
also appended to a journal (one `os.write` per received batch, no fsync: a process crash keeps
the page cache, power loss may lose the tail) and the journal is rotated at each snapshot.
Recovery loads the snapshot and replays its journal generation through the same pipeline;
replay is safe because billing is idempotent by call key in the ledger.

A snapshot's cost grows with the number of calls in progress (~12,500 at 5,000 calls/s of
2.5 s calls; SPEC §10 asks for 100,000). Taking one every second on the event loop ate over
half the loop under load (bench/e2e.py, 2026-11-22), and at 100,000 active calls one snapshot
held the loop for 2.3 s, long enough for the socket buffer to overflow (bench/active.py,
2026-11-23). So a snapshot is taken in two steps: on the loop, between two batches, the
tracker's state is copied (`Tracker.capture`, immutable values only) and `begin_checkpoint`
starts the next journal generation, so the copy and the new journal meet exactly; then
`write_snapshot` encodes and writes it on a worker thread while the loop goes on appending to
the new journal. Until the new snapshot is in place the old snapshot and both journals are
the truth: recovery replays every journal from the snapshot's generation on, in order.
`checkpoint_due` also spaces snapshots so that they take at most `SNAPSHOT_SHARE` of wall time
(and at most one per `SNAPSHOT_MIN_S`), and never starts one while another is being written;
the journal keeps every datagram in between, so a crash still loses nothing, only restart
replay gets longer. The share is 2 % (5 % until 2026-11-24): at 55,000 HEP packets/s the
snapshot thread held the GIL for 0.4–0.9 µs per packet, a twentieth of the event loop's
budget, and the loop is what limits the end-to-end rate (bench/README.md). The price is a
longer replay after `kill -9`: snapshots 2.5× further apart (a few seconds of traffic at
that rate, replayed at restart before the listeners read).

The ingest process (vmgated/ingest.py) reads the HEP listeners bound to an address and
journals them itself, ahead of the loop, in files of its own (`IngestJournal`). Its journal
is not rotated at a snapshot: each batch it hands over says where it ends in that journal,
and the snapshot stores the position of the last batch the loop processed
(`IngestPosition`); recovery replays the ingest journals from there, and a snapshot removes
the ingest files before its position's.

Files in `<state_dir>/dialogs/`: `snapshot` (`VMGT`, u32 generation, u32 ingest generation,
u64 ingest offset, payload; `VMGS`, u32 generation, payload before 2026-11-24),
`journal.<generation>` (the daemon's own: CDR listeners, HEP listeners on an interface) and
`ingest.<generation>` (the ingest process's; a new process starts a new generation, and a
file past INGEST_ROTATE_BYTES is followed by the next). Records: u8 kind, u16 sender length,
sender, u32 length, payload; or, for a batch from one sender, u8 kind | 0x80, u16 sender
length, sender, u32 count, count × u32 length, the payloads. (Journals written before
2026-11-24 hold the first kind only.)
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

HEP = 1
CDR = 2
_SNAP_MAGIC = b"VMGS"  # u32 generation, then the payload (written before 2026-11-24)
_SNAP_MAGIC_INGEST = b"VMGT"  # u32 generation, u32 ingest generation, u64 ingest offset
_INGEST_POS = struct.Struct("!IQ")
INGEST_ROTATE_BYTES = 64 << 20  # an ingest journal file this large is followed by a new one
_HEAD = struct.Struct("!BH")
_LEN = struct.Struct("!I")
_RUN = 0x80  # kind bit: a run record (u32 count, count u32 lengths, then the payloads)
SNAPSHOT_MIN_S = 1.0  # at most one snapshot per tick
SNAPSHOT_SHARE = 0.02  # of wall time spent building and writing snapshots, at most
SNAPSHOT_RETRY_S = 10.0  # after a failed snapshot (disk full): each try starts a journal file
_READ_CHUNK = 1 << 20  # bytes of journal read at a time when replaying
_SENDER_CACHE = 4096  # distinct senders whose framed prefix is remembered; cleared when full


@dataclass(frozen=True, slots=True)
class Entry:
    """One journalled datagram: its input kind, the sender ('ip:port') and the raw bytes."""

    kind: int
    sender: str
    payload: bytes


class IngestPosition(NamedTuple):
    """How far into the ingest process's journals the daemon has processed: a generation
    (file `ingest.<gen>`) and a byte offset in it. Everything before it is in the state the
    position is stored with."""

    gen: int
    offset: int


_START = IngestPosition(0, 0)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restart finds: the last snapshot payload (None on first start) and the journal
    files written since it, oldest first."""

    snapshot: bytes | None
    journals: tuple[Path, ...]
    damaged: str | None = None  # why a snapshot file that exists is not one we wrote whole
    ingest: IngestPosition = _START  # where the ingest journals are read from
    ingest_files: tuple[tuple[Path, int], ...] = ()  # (file, offset to read from), oldest first

    def entries(self) -> Iterator[Entry]:
        """The journalled datagrams, in order, read one at a time: the daemon's own journals,
        then the ingest process's from the snapshot's position on.

        The two streams hold different sockets' datagrams (the ingest process reads the HEP
        listeners bound to an address; the daemon the CDR listeners and HEP listeners that
        follow an interface), so the order between them matters only for a call captured on
        both kinds of HEP listener at once.
        """
        for path in self.journals:
            yield from file_entries(path)
        for path, offset in self.ingest_files:
            yield from file_entries(path, offset)


def file_entries(path: Path, offset: int = 0) -> Iterator[Entry]:
    """The datagrams journalled in one file from `offset` on, in order, one at a time.

    Read `_READ_CHUNK` bytes at a time, never whole: snapshots are spaced by their cost,
    so with 100,000 calls in progress a journal can hold a minute of traffic (hundreds
    of MB), and a restart after `kill -9` must not need that much memory to replay it.
    (Not mmap: the pages it touches count in the process's RSS until it is unmapped.)
    A file that is gone yields nothing.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator's last read
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        carry = b""
        while chunk := f.read(_READ_CHUNK):
            data = carry + chunk if carry else chunk
            end = 0
            for entry, after in _records(data):
                yield entry
                end = after
            carry = data[end:]
        # A torn last record (crash mid-write) is left in `carry`, unread.


_prefixes: dict[tuple[int, tuple[str, int]], bytes] = {}


def _prefix(kind: int, addr: tuple[str, int]) -> bytes:
    if len(_prefixes) >= _SENDER_CACHE:
        _prefixes.clear()  # bounded under a spoofed-source flood
    sender = f"{addr[0]}:{addr[1]}".encode()
    head = _prefixes[(kind, addr)] = _HEAD.pack(kind, len(sender)) + sender
    return head


def encode_entries(kind: int, batch: Sequence[tuple[bytes, tuple[str, int]]]) -> bytes:
    """Frame a batch of (payload, (ip, port)) datagrams as journal records.

    A batch from one sender (a proxy sends from one port: nearly always) is one run record:
    one header, a table of lengths, the payloads. Framing each datagram on its own cost
    0.45 µs per datagram inside the daemon at 55,000/s, the run ~0.1 (bench/README.md).
    """
    if not batch:
        return b""
    payloads, senders = zip(*batch, strict=True)
    first = senders[0]
    n = len(payloads)
    if senders.count(first) == n:
        run_head = _prefixes.get((kind | _RUN, first)) or _prefix(kind | _RUN, first)
        return b"".join((run_head, _LEN.pack(n), struct.pack(f"!{n}I", *map(len, payloads)),
                         *payloads))  # fmt: skip
    # Several senders: one record per datagram, with its sender's framed prefix (built once
    # per (kind, addr)).
    prefixes = _prefixes
    pack_len = _LEN.pack
    parts: list[bytes] = []
    append = parts.append
    for payload, addr in batch:
        head = prefixes.get((kind, addr))
        append(_prefix(kind, addr) if head is None else head)
        append(pack_len(len(payload)))
        append(payload)
    return b"".join(parts)


def decode_entries(data: bytes) -> Iterator[Entry]:
    """Read journal records; a torn last record (crash mid-write) is ignored."""
    for entry, _ in _records(data):
        yield entry


def _records(data: bytes) -> Iterator[tuple[Entry, int]]:
    """Each datagram of the whole records in `data`, with the offset just past its record."""
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        kind, slen = _HEAD.unpack_from(view, pos)
        pos += _HEAD.size
        if pos + slen + _LEN.size > end:
            return
        sender = bytes(view[pos : pos + slen]).decode("ascii", "replace")
        pos += slen
        (count,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if not kind & _RUN:
            if pos + count > end:
                return
            yield Entry(kind, sender, bytes(view[pos : pos + count])), pos + count
            pos += count
            continue
        # A run: `count` lengths, then the payloads; read only once it is all there.
        if pos + 4 * count > end:
            return
        lengths = struct.unpack_from(f"!{count}I", view, pos)
        pos += 4 * count
        after = pos + sum(lengths)
        if after > end:
            return
        kind &= ~_RUN
        for length in lengths:
            yield Entry(kind, sender, bytes(view[pos : pos + length])), after
            pos += length


def generations(directory: Path, stem: str) -> list[int]:
    """Generations of the files `<stem>.<gen>` in `directory`, ascending."""
    gens = []
    for path in directory.glob(f"{stem}.*"):
        suffix = path.name.partition(".")[2]
        if suffix.isdigit():
            gens.append(int(suffix))
    return sorted(gens)


def ingest_path(directory: Path, gen: int) -> Path:
    """The ingest process's journal file of generation `gen` in `directory`."""
    return directory / f"ingest.{gen}"


def write_whole(fd: int, data: bytes) -> None:
    """Append `data` with one write, or raise OSError leaving the file as it was.

    A short write (disk full, file size limit) is undone: it would leave a torn record
    mid-file, and replay stops at the first one, so the records after it would be lost.
    """
    # One joined write beat os.writev of the parts (0.52 vs 0.63 µs/datagram, batches of
    # 64 × 600 bytes): building the iovec costs more than the copy it saves.
    written = os.write(fd, data)
    if written != len(data):
        end = os.lseek(fd, 0, os.SEEK_END)
        os.ftruncate(fd, end - written)
        raise OSError(errno.ENOSPC, f"journal: short write ({written} of {len(data)} bytes), "
                      "undone")


class IngestJournal:
    """The ingest process's side: appends its batches to `ingest.<gen>` and says where each
    one ends, starting a new file past INGEST_ROTATE_BYTES.

    Files only ever move forward, so the daemon, which removes the files a snapshot covers,
    never removes the one being written.
    """

    def __init__(self, directory: Path, gen: int) -> None:
        self.dir = directory
        self.gen = gen
        self.offset = 0
        self._fd = self._open(gen)

    def _open(self, gen: int) -> int:
        return os.open(ingest_path(self.dir, gen),
                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)

    @property
    def position(self) -> IngestPosition:
        """Where the next batch will start (everything before it is written)."""
        return IngestPosition(self.gen, self.offset)

    def append(self, kind: int, batch: Sequence[tuple[bytes, tuple[str, int]]]) -> None:
        """Journal a batch with one write (OSError: not written, the file unchanged)."""
        if not batch:
            return
        if self.offset >= INGEST_ROTATE_BYTES:
            fd = self._open(self.gen + 1)
            os.close(self._fd)
            self._fd, self.gen, self.offset = fd, self.gen + 1, 0
        data = encode_entries(kind, batch)
        write_whole(self._fd, data)
        self.offset += len(data)

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Journal:
    """Owns the snapshot and journal files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "dialogs"
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._gen = 0
        self._fd = -1
        self._next_due = 0.0
        self._started: float | None = None
        self._writing = False

    def _journal_path(self, gen: int) -> Path:
        return self.dir / f"journal.{gen}"

    def _journals(self) -> list[int]:
        """Generations of the journal files present, ascending."""
        return generations(self.dir, "journal")

    def next_ingest_gen(self) -> int:
        """The generation a (new) ingest process starts writing: one past every file present.

        Never an existing one: a killed ingest process may have left a torn record at the
        end of its file, and replay stops reading a file at the first torn record.
        """
        gens = generations(self.dir, "ingest")
        return gens[-1] + 1 if gens else 1

    def ingest_tail(self, since: IngestPosition) -> Iterator[Entry]:
        """Every datagram the ingest process journalled from `since` on, in order (what a
        daemon replays when its ingest process died before handing all of it over)."""
        for gen in generations(self.dir, "ingest"):
            if gen >= since.gen:
                yield from file_entries(ingest_path(self.dir, gen),
                                        since.offset if gen == since.gen else 0)

    def recover(self) -> Recovered:
        """Read the snapshot and every journal since it, then open the last for appending.

        A crash while a snapshot was being written leaves the old snapshot and two journals
        (the one it covers and the next one): both are replayed, in order. Journals older
        than the snapshot (a crash after it was replaced, before they were removed) are
        removed unread: the snapshot covers them.
        """
        snap_path = self.dir / "snapshot"
        snapshot: bytes | None = None
        damaged: str | None = None
        ingest = _START
        if snap_path.exists():
            raw = snap_path.read_bytes()
            head = 8 + _INGEST_POS.size
            if raw[:4] == _SNAP_MAGIC_INGEST and len(raw) >= head:
                self._gen = int.from_bytes(raw[4:8], "big")
                ingest = IngestPosition(*_INGEST_POS.unpack_from(raw, 8))
                snapshot = raw[head:]
            elif raw[:4] == _SNAP_MAGIC and len(raw) >= 8:
                self._gen = int.from_bytes(raw[4:8], "big")
                snapshot = raw[8:]
            else:
                # Not a file we wrote whole: said (and set aside by the caller) rather than
                # silently ignored and then overwritten. Every journal is replayed.
                damaged = f"{len(raw)} bytes without the {_SNAP_MAGIC!r} header"
        journals: list[Path] = []
        for gen in self._journals():
            path = self._journal_path(gen)
            if gen < self._gen:
                path.unlink()
                continue
            journals.append(path)
            self._gen = gen
        ingest_files: list[tuple[Path, int]] = []
        for gen in generations(self.dir, "ingest"):
            path = ingest_path(self.dir, gen)
            if gen < ingest.gen:
                path.unlink()
            else:
                ingest_files.append((path, ingest.offset if gen == ingest.gen else 0))
        self._fd = os.open(
            self._journal_path(self._gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
        )
        return Recovered(snapshot, tuple(journals), damaged, ingest, tuple(ingest_files))

    def set_aside_snapshot(self) -> Path:
        """Rename an unreadable snapshot to `snapshot.unreadable` (replacing an older one).

        Recovery has already chosen the journals to replay; the generation counter goes on
        from them, so nothing else changes.
        """
        kept = self.dir / "snapshot.unreadable"
        (self.dir / "snapshot").replace(kept)
        return kept

    def append(self, kind: int, batch: Sequence[tuple[bytes, tuple[str, int]]]) -> None:
        """Journal a received batch with one write (before it is processed).

        Raises OSError when the batch could not be written whole (disk full, file size
        limit); the journal is then left as it was before this call, so the records after it
        stay readable (a short write would otherwise leave a torn record mid-file, and replay
        stops at the first one).
        """
        if batch:
            write_whole(self._fd, encode_entries(kind, batch))

    def checkpoint_due(self) -> bool:
        """True when the periodic snapshot should be taken now (see SNAPSHOT_SHARE).

        Never while a snapshot is still being written. The time from this call returning
        True to `checkpoint_done` (capture, encoding and writing) is the cost the next
        spacing is derived from.
        """
        now = time.monotonic()
        if self._writing or now < self._next_due:
            return False
        self._started = now
        return True

    def begin_checkpoint(self) -> int:
        """Start the next journal generation (appends go there from now on); its number.

        Call it between two batches, right after copying the state the snapshot will hold;
        then `write_snapshot(gen, ...)` (on any thread) and `checkpoint_done()`.
        """
        new_gen = self._gen + 1
        new_fd = os.open(
            self._journal_path(new_gen), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
            0o640,
        )
        old_fd = self._fd
        self._fd, self._gen = new_fd, new_gen
        self._writing = True
        if old_fd >= 0:
            os.close(old_fd)
        return new_gen

    def write_snapshot(
        self, gen: int, pieces: Iterable[bytes], ingest: IngestPosition | None = None
    ) -> None:
        """Durably replace the snapshot with generation `gen`, then drop the older journals.

        `ingest`: how far into the ingest process's journals the snapshot's state goes (the
        files before its generation are dropped too). Touches files only (no state shared
        with the loop), so it may run on a worker thread while the loop appends to journal
        `gen`. The GIL is released between pieces.
        """
        tmp = self.dir / "snapshot.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # as the journal
        try:
            with open(fd, "wb") as f:
                if ingest is None:
                    f.write(_SNAP_MAGIC + gen.to_bytes(4, "big"))
                else:
                    f.write(_SNAP_MAGIC_INGEST + gen.to_bytes(4, "big")
                            + _INGEST_POS.pack(*ingest))
                for piece in pieces:
                    f.write(piece)
                    time.sleep(0)  # let the event loop in between two pieces
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            # A part-written snapshot (disk full) would keep holding the space it took,
            # which the ledger and the journal need; the old snapshot is still the truth.
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.dir / "snapshot")
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self._journals():
            if old < gen:
                self._journal_path(old).unlink(missing_ok=True)
        if ingest is not None:
            for old in generations(self.dir, "ingest"):
                if old < ingest.gen:
                    ingest_path(self.dir, old).unlink(missing_ok=True)

    def checkpoint_done(self, failed: bool = False) -> None:
        """The snapshot begun last is written, or `failed`: space the next one by its cost,
        or by SNAPSHOT_RETRY_S after a failure (each try starts a new journal generation,
        which only a snapshot that succeeds removes)."""
        self._writing = False
        if self._started is not None:
            cost = time.monotonic() - self._started
            spacing = max(SNAPSHOT_MIN_S, cost / SNAPSHOT_SHARE)
            if failed:
                spacing = max(spacing, SNAPSHOT_RETRY_S)
            self._next_due = self._started + spacing
            self._started = None

    def checkpoint(self, snapshot: bytes) -> None:
        """Replace the snapshot and start a new journal generation, all at once.

        Called between batches, so the snapshot reflects every journalled datagram; a crash
        at any point leaves either (old snapshot, old journal[, new journal]) or (new
        snapshot, new journal).
        """
        gen = self.begin_checkpoint()
        try:
            self.write_snapshot(gen, (snapshot,))
        finally:
            self.checkpoint_done()

    def close(self) -> None:
        """Close the journal file (the caller checkpoints first on a clean stop)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
