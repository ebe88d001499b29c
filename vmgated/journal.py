"""Dialog state that survives `kill -9`: a snapshot every second plus a journal of raw input.

The tracker's in-memory dialogs are the only state that is not in the ledger. Persisting them
only once a second would lose the last second's answers on a crash, so every input datagram is
also appended to a journal (one `os.write` per received batch, no fsync: a process crash keeps
the page cache, power loss may lose the tail) and the journal is rotated at each snapshot.
Recovery loads the snapshot and replays its journal generation through the same pipeline;
replay is safe because billing is idempotent by call key in the ledger.

Files in `<state_dir>/dialogs/`: `snapshot` (`VMGS`, u32 generation, payload) and
`journal.<generation>` (records: u8 kind, u16 sender length, sender, u32 length, payload).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HEP = 1
CDR = 2
_SNAP_MAGIC = b"VMGS"
_HEAD = struct.Struct("!BH")
_LEN = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Entry:
    """One journalled datagram: its input kind, the sender ('ip:port') and the raw bytes."""

    kind: int
    sender: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restart finds: the last snapshot payload (None on first start) and the tail."""

    snapshot: bytes | None
    entries: tuple[Entry, ...]


def encode_entries(kind: int, batch: Sequence[tuple[bytes, tuple[str, int]]]) -> bytes:
    """Frame a batch of (payload, (ip, port)) datagrams as journal records."""
    parts: list[bytes] = []
    for payload, (ip, port) in batch:
        sender = f"{ip}:{port}".encode()
        parts.append(_HEAD.pack(kind, len(sender)))
        parts.append(sender)
        parts.append(_LEN.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_entries(data: bytes) -> Iterator[Entry]:
    """Read journal records; a torn last record (crash mid-write) is ignored."""
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        kind, slen = _HEAD.unpack_from(view, pos)
        pos += _HEAD.size
        if pos + slen + _LEN.size > end:
            return
        sender = bytes(view[pos : pos + slen]).decode("ascii", "replace")
        pos += slen
        (plen,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if pos + plen > end:
            return
        yield Entry(kind, sender, bytes(view[pos : pos + plen]))
        pos += plen


class Journal:
    """Owns the snapshot and journal files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "dialogs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._gen = 0
        self._fd = -1

    def _journal_path(self, gen: int) -> Path:
        return self.dir / f"journal.{gen}"

    def recover(self) -> Recovered:
        """Read the snapshot and its journal, then open that journal for appending."""
        snap_path = self.dir / "snapshot"
        snapshot: bytes | None = None
        if snap_path.exists():
            raw = snap_path.read_bytes()
            if raw[:4] == _SNAP_MAGIC and len(raw) >= 8:
                self._gen = int.from_bytes(raw[4:8], "big")
                snapshot = raw[8:]
        jpath = self._journal_path(self._gen)
        entries = tuple(decode_entries(jpath.read_bytes())) if jpath.exists() else ()
        for stale in self.dir.glob("journal.*"):
            if stale != jpath:
                stale.unlink()
        self._fd = os.open(jpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        return Recovered(snapshot, entries)

    def append(self, kind: int, batch: Sequence[tuple[bytes, tuple[str, int]]]) -> None:
        """Journal a received batch with one write (before it is processed)."""
        if batch:
            os.write(self._fd, encode_entries(kind, batch))

    def checkpoint(self, snapshot: bytes) -> None:
        """Atomically replace the snapshot and start a new journal generation.

        Called between batches, so the snapshot reflects every journalled datagram; a crash
        at any point leaves either (old snapshot, old journal) or (new snapshot, new journal).
        """
        new_gen = self._gen + 1
        new_fd = os.open(
            self._journal_path(new_gen), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
            0o640,
        )
        tmp = self.dir / "snapshot.tmp"
        with open(tmp, "wb") as f:
            f.write(_SNAP_MAGIC + new_gen.to_bytes(4, "big") + snapshot)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "snapshot")
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        old_fd, old_gen = self._fd, self._gen
        self._fd, self._gen = new_fd, new_gen
        if old_fd >= 0:
            os.close(old_fd)
        self._journal_path(old_gen).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the journal file (the caller checkpoints first on a clean stop)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
