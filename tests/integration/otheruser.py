"""Run a command as another Unix user, as a billing clerk beside the daemon's user would.

Not a test module: imported by tests that check what a user in the daemon's group (but not
its user) can do with the files vmgated and vmgatectl leave. Needs root (CI is).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

DAEMON_GID = 41001  # the daemon's group, which clerks join
CLERK = 41002  # a clerk: own uid and primary group, member of DAEMON_GID


def as_user(
    uid: int, groups: list[int], argv: list[str], **popen: object
) -> subprocess.Popen[str]:
    """Start `argv` as `uid` (primary group `uid`, plus `groups`) with umask 077."""
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}",
               f"--groups={','.join(str(g) for g in [uid, *groups])}"]
    cmd = " ".join(shlex.quote(a) for a in [*setpriv, *argv])
    return subprocess.Popen(["sh", "-c", f"umask 077; exec {cmd}"], text=True,
                            **popen)  # type: ignore[call-overload]


def vmgatectl_as(uid: int, groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    """`vmgatectl ARGS` as that user; its exit code and output."""
    proc = as_user(uid, groups, [sys.executable, "-m", "vmgated.cli.main", *args],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
