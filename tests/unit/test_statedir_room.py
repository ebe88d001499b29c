"""`room_note`: what a start that the state dir's filesystem refused says about the room."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from vmgated.statedir import _size, explain, room_note


def test_sizes_read_as_an_operator_writes_them() -> None:
    assert [_size(n) for n in (0, 1023, 1024, 4 << 20, 5 << 30, 3 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "4.0 MiB", "5.0 GiB", "3072.0 GiB"
    ]


def test_only_a_refused_write_gets_the_note(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    note = room_note(full, tmp_path)  # the free figure itself moves with other writers
    assert note.startswith(f" (state dir {tmp_path}: ") and " free of " in note
    assert room_note(sqlite3.OperationalError("database or disk is full"), tmp_path)
    assert room_note(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert room_note(OSError(errno.EACCES, "Permission denied"), tmp_path) == ""
    assert room_note(sqlite3.OperationalError("no such table: calls"), tmp_path) == ""
    assert room_note(ValueError("full"), tmp_path) == ""
    assert room_note(full, tmp_path / "gone") == ""  # statvfs fails: no note, no error


def test_explain_gives_the_file_owner_or_the_room_as_the_failure_asks(tmp_path: Path) -> None:
    locked = tmp_path / "snapshot"
    locked.write_text("")
    denied = explain(PermissionError(errno.EACCES, "Permission denied", str(locked)), tmp_path)
    assert denied.startswith("[Errno 13] Permission denied: ") and "(owned by " in denied
    assert " free of " not in denied
    full = explain(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert full.startswith(f"[Errno 28] No space left on device (state dir {tmp_path}: ")
    assert explain(sqlite3.OperationalError("database or disk is full"), tmp_path).startswith(
        "database or disk is full (state dir ")
    assert explain(ValueError("bad"), tmp_path) == "bad"
