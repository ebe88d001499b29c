"""The parent's handle on the ledger's write process (ledger/sink.py): spawn, ask, close.

Frames on the child's stdin and stdout: an 8-byte big-endian length, then a pickle of a tuple.
A request is `(op, *args)`; its reply is `("ok", value)` or `("err", error class name,
message)`. One request is in flight at a time (a lock keeps them in order) and every request
is answered, so replies need no ids.

Pickles travel only between this process and the child it spawned, over its own pipes.
Requests are pickled without a memo (`Pickler.fast`): the rows of a group are acyclic tuples
of str/int/None, and the memo was most of pickle's cost (4.7 → 1.3 µs per call transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import pickle
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any

from ledger.errors import LedgerError, LedgerWriteFailed, SchemaError

FRAME = struct.Struct(">Q")
"""The length before every frame."""

_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (LedgerError, LedgerWriteFailed, SchemaError)
}
PIPE_BYTES = (8 << 20, 4 << 20, 2 << 20, 1 << 20)
"""Buffer sizes the write process tries for its request pipe, largest first (Linux caps
unprivileged processes at /proc/sys/fs/pipe-max-size, 1 MiB by default). A group of 1,000
call transactions is a ~780 KB frame: with a buffer that holds it, the daemon writes it in one
`write` that returns at once. With the default 64 KiB the event loop sent it in 12 pieces, one
per loop iteration, and the write process sat idle between them (bench/ledger.py: 77k
postings/s instead of 117–126k). The child sets it (F_SETPIPE_SZ works on either end) because
uvloop's pipe transports do not expose their descriptor."""
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(fd: int) -> None:
    """Grow the pipe behind `fd` to the largest of PIPE_BYTES allowed (else leave it)."""
    for size in PIPE_BYTES:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return


_SELF = "/proc/self/exe"
# The directory that holds the `ledger` package: the child must import the same code even
# when the parent found it through a sys.path entry of its own (the benchmarks do).
ROOT = str(Path(__file__).resolve().parent.parent)


class WriteProcessDied(LedgerWriteFailed):
    """The write process is gone (killed, crashed) or its pipe was cut mid-request."""


def interpreter() -> str:
    """The program to run the write process with: this interpreter.

    `sys.executable` when this user may run it (so `ps` shows the venv's python), else the
    running interpreter by its inode, `/proc/self/exe`: seen in the sandbox, where a venv
    linked into root's 0700 home ran as the service user but could not be run again by path.
    The child needs nothing beyond the standard library and this repository's `ledger` and
    `rating` packages (PYTHONPATH), so the venv's site-packages do not matter to it.
    """
    if os.access(sys.executable, os.X_OK) or not os.path.exists(_SELF):
        return sys.executable
    return _SELF


def dump_frame(message: tuple[Any, ...]) -> bytes:
    """A request or reply as one frame (length + memo-less pickle)."""
    buf = io.BytesIO()
    buf.write(bytes(FRAME.size))
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.fast = True  # no memo: see the module docstring
    pickler.dump(message)
    data = buf.getbuffer()
    FRAME.pack_into(data, 0, len(data) - FRAME.size)
    return bytes(data)


def rebuild_error(name: str, message: str) -> Exception:
    """The parent-side exception for an error the child reported by class name."""
    known = _ERRORS.get(name)
    if known is not None:
        return known(message)
    cls = getattr(sqlite3, name, None)
    if isinstance(cls, type) and issubclass(cls, sqlite3.Error):
        return cls(message)
    return LedgerWriteFailed(f"ledger write process: {name}: {message}")


class WriteProcess:
    """The running write process of one ledger file, seen from the daemon."""

    def __init__(self, proc: asyncio.subprocess.Process, path: str) -> None:
        """Use `await WriteProcess.start(path)`."""
        self._proc = proc
        self._path = path
        self._lock = asyncio.Lock()
        self._broken: str | None = None  # why no request can be sent any more

    @classmethod
    async def start(cls, path: str, *, wal_checkpoint_every: int) -> WriteProcess:
        """Spawn the write process and wait until it holds the file (locked and migrated).

        Raises what the child met: SchemaError (a newer file), LedgerError (another process
        holds the write lock), sqlite3.Error (the file cannot be opened).
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ledger.sink",
            path,
            str(os.getpid()),
            str(wal_checkpoint_every),
            executable=interpreter(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self = cls(proc, path)
        try:
            await self._reply()
        except BaseException:
            await self.abort()
            raise
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    async def request(self, *message: Any) -> Any:
        """Send one request and return its reply's value (or raise the child's error)."""
        async with self._lock:
            if self._broken is not None:
                raise WriteProcessDied(self._broken)
            stdin = self._proc.stdin
            assert stdin is not None
            try:
                stdin.write(dump_frame(message))
                await stdin.drain()
                return await self._reply()
            except (LedgerError, sqlite3.Error):
                raise
            except ConnectionError as exc:
                raise await self._died() from exc
            except BaseException:
                # Cancelled or cut off part-way: the next reply would answer this request.
                self._broken = self._broken or "ledger write process: a request was cut off"
                raise

    async def _died(self) -> WriteProcessDied:
        code = await self._proc.wait()
        self._broken = (
            f"the ledger write process (pid {self._proc.pid}) exited with status {code}"
        )
        return WriteProcessDied(self._broken)

    async def _reply(self) -> Any:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            head = await stdout.readexactly(FRAME.size)
            (size,) = FRAME.unpack(head)
            reply = pickle.loads(await stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise await self._died() from exc
        if reply[0] == "ok":
            return reply[1]
        raise rebuild_error(reply[1], reply[2])

    async def close(self) -> None:
        """Ask the child to fold the WAL in and exit; wait for it."""
        if self._proc.returncode is None and self._broken is None:
            try:
                await self.request("close")
            except LedgerWriteFailed:
                pass  # already gone: said by the request that found it
            finally:
                await self.abort()
        else:
            await self.abort()

    async def abort(self) -> None:
        """End the child now (it is killed if still running) and reap it."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        if self._proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), 5.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
