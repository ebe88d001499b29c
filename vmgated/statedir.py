"""One daemon per state directory, run by the directory's owner: a lock file the kernel
releases with the process, and a refusal to run as root in another user's directory."""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import sqlite3
import stat
from pathlib import Path

__all__ = [
    "StateDirBusy", "StateDirNotOurs", "check_owner", "explain", "group_name",
    "lock_state_dir", "room_note", "user_name",
]  # fmt: skip


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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: say which file, as os.open would have
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(state_dir / "vmgated.lock")) from exc
    return fd


class StateDirNotOurs(OSError):
    """root was asked to run a daemon in a state directory another user owns."""


def check_owner(state_dir: Path) -> None:
    """Refuse to run as root in a state directory another user owns (the service's user).

    Every file root creates there — journal generations, dialog snapshots — is then root's,
    0640: the service, started again as its own user, could not read them and failed to
    start ("Permission denied: .../dialogs/snapshot") until someone chowned them back.
    """
    if os.geteuid() != 0:
        return
    owner = state_dir.stat().st_uid
    if owner == 0:
        return
    name = user_name(owner)
    raise StateDirNotOurs(
        f"state dir {state_dir} belongs to user {name}, and this is root: files created now "
        f"would be root's and the service (as {name}) could not read them; run vmgated as "
        f"{name} (`systemctl start vmgated`, or `runuser -u {name} -- vmgated --config ...`)"
    )


def explain_denied(exc: OSError) -> str:
    """`exc` in words, with whose file it is when access was denied (EACCES/EPERM)."""
    text = str(exc)
    if exc.errno not in (errno.EACCES, errno.EPERM) or not exc.filename:
        return text
    try:
        st = os.stat(exc.filename)
    except OSError:
        return text
    return (f"{text} (owned by {user_name(st.st_uid)}:{group_name(st.st_gid)}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}; vmgated runs as {user_name(os.geteuid())})")


def explain(exc: BaseException, state_dir: Path) -> str:
    """A start or state-write failure in one line: `exc`, whose file it is when access was
    denied (`explain_denied`), and the room left when the filesystem refused (`room_note`)."""
    text = explain_denied(exc) if isinstance(exc, OSError) else str(exc)
    return text + room_note(exc, state_dir)


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def room_note(exc: BaseException, state_dir: Path) -> str:
    """For a write the state dir's filesystem refused (full, over quota, read-only; OSError
    or SQLite's "database or disk is full"), how much room it has, e.g. " (state dir
    /var/lib/vmgated: 0 B free of 4.0 GiB)"; else ""."""
    if isinstance(exc, OSError):
        if exc.errno not in _NO_ROOM:
            return ""
    elif not isinstance(exc, sqlite3.Error) or not (
        "full" in str(exc) or "readonly" in str(exc)
    ):
        return ""
    try:
        st = os.statvfs(state_dir)
    except OSError:
        return ""
    ro = ", read-only" if st.f_flag & os.ST_RDONLY else ""
    return (f" (state dir {state_dir}: {_size(st.f_bavail * st.f_frsize)} free of "
            f"{_size(st.f_blocks * st.f_frsize)}{ro})")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def user_name(uid: int) -> str:
    """The login name of `uid`, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """The name of group `gid`, else the number."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
