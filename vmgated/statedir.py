"""One daemon per state directory: a lock file the kernel releases with the process."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StateDirBusy", "lock_state_dir"]


class StateDirBusy(OSError):
    """Another vmgated holds the state directory."""


def lock_state_dir(state_dir: Path) -> int:
    """Take `state_dir/vmgated.lock` for this process (a held fd; the kernel frees it at
    exit, `kill -9` included); raise StateDirBusy naming the holder's pid if another has it.

    Two daemons on one state dir would append to the same journal generations and replace
    each other's dialog snapshots: the crash-recovery state of both would be garbage. The
    control socket does not catch it when the two configs name different sockets.
    """
    fd = os.open(state_dir / "vmgated.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StateDirBusy(
            f"state dir {state_dir} is in use by another vmgated (pid {holder}); stop it, "
            "or give this one a state_dir of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
