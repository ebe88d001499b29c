"""The control socket: JSON lines over a Unix stream socket between vmgatectl and the daemon.

Protocol, one JSON object per line, any number of requests per connection, answered in order:

    request   {"cmd": "pay", "args": {...}}
    progress  {"progress": 120, "total": 5000}        (zero or more, long operations only)
    response  {"ok": true, "result": ...}  or  {"ok": false, "error": "what went wrong"}

The daemon registers one handler per command: `async handler(args, progress)`; it returns a
JSON-serialisable result or raises `ControlError` with a message for the operator. Any other
exception becomes an error response too (and a logged traceback); it never stops the server.

A handler whose result is a long list (calls in progress: 100,000 of them) returns `Rows`
instead: the rows are then produced, encoded and written a chunk at a time, the event loop
going back to its datagrams between chunks, instead of building and encoding the whole list
at once (a 1.5 s stall of the UDP reader at 100,000 calls, measured by bench/active.py). The
line on the wire is the same `{"ok":true,"result":[...]}`. A row that fails mid-stream closes
the connection without finishing the line, which the client reports as an error: a listing is
never cut short silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from itertools import islice
from typing import Any

__all__ = [
    "ControlError",
    "ControlServer",
    "DaemonNotRunning",
    "Handler",
    "Progress",
    "Rows",
    "call",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # progress(done, total)
Handler = Callable[[dict[str, Any], Progress], Awaitable[object]]

SOCKET_MODE = 0o660  # owner and group (vmgated): the group is who may run vmgatectl
REQUEST_LIMIT = 1 << 20  # bytes in one request line
RESPONSE_LIMIT = 1 << 30  # a `calls` listing can be large
PROGRESS_EVERY = 0.1  # seconds between two progress lines (the last one is always sent)
ROWS_CHUNK = 1000  # rows of a `Rows` result produced and written between two loop turns
_COMPACT = (",", ":")


class Rows:
    """A list result produced lazily: the server encodes and sends it a chunk at a time."""

    __slots__ = ("rows",)

    def __init__(self, rows: Iterable[object]) -> None:
        self.rows = rows


class ControlError(Exception):
    """An error for the operator: raised by handlers, or by `call` for an error response."""


class DaemonNotRunning(ControlError):
    """No daemon listens on the control socket."""


class ControlServer:
    """Serves the control protocol on a Unix socket with the given command handlers."""

    def __init__(self, path: str | os.PathLike[str], handlers: Mapping[str, Handler]) -> None:
        self.path = os.fspath(path)
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (mode 0660), removing a stale file from a daemon that died.

        Raises ControlError when another daemon is answering on the same path, or when the
        socket cannot be made there (no such directory, no permission).
        """
        _remove_stale(self.path)
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path,
                                                           limit=REQUEST_LIMIT)
        except OSError as exc:
            # The bind error names no path; the operator needs it (`listen.control`).
            raise ControlError(f"control socket {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)

    async def stop(self) -> None:
        """Stop accepting, close the socket and remove its file."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # line over REQUEST_LIMIT
                    await _send(writer, {"ok": False, "error": "request too long (a line of "
                                         f"more than {REQUEST_LIMIT} bytes); nothing was done"})
                    return
                if not line:
                    return
                if line.strip() and not await self._respond(line, writer):
                    return
        except ConnectionError:
            pass  # vmgatectl went away (Ctrl-C); the operation it started keeps its result
        finally:
            writer.close()

    async def _respond(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request line; False when the connection must be closed."""
        cmd, outcome = await self._answer(line, writer)
        if isinstance(outcome, dict):
            await _send(writer, outcome)
            return True
        result = outcome[0]
        if isinstance(result, Rows):
            return await _send_rows(writer, cmd, result)
        try:
            data = json.dumps({"ok": True, "result": result}, separators=_COMPACT)
        except (TypeError, ValueError) as exc:
            log.exception("control command %r returned a value that is not JSON", cmd)
            await _send(writer, _failed(cmd, exc))
            return True
        writer.write(data.encode() + b"\n")
        await writer.drain()
        return True

    async def _answer(
        self, line: bytes, writer: asyncio.StreamWriter
    ) -> tuple[str, dict[str, Any] | tuple[object]]:
        """(command, an error response or a 1-tuple holding the handler's result)."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            return "", {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return "", {"ok": False, "error": 'request must be {"cmd": "...", "args": {...}}'}
        cmd = request["cmd"]
        args = request.get("args") or {}
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return cmd, {"ok": False, "error": f"unknown command {cmd!r}; known: {known}"}
        if not isinstance(args, dict):
            return cmd, {"ok": False, "error": f"{cmd}: args must be an object"}
        try:
            return cmd, (await handler(args, _progress_writer(writer)),)
        except ControlError as exc:
            return cmd, {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            return cmd, _failed(cmd, exc)


def _failed(cmd: str, exc: Exception) -> dict[str, Any]:
    return {"ok": False, "error": f"{cmd} failed inside the daemon: {type(exc).__name__}: {exc}"}


async def _send_rows(writer: asyncio.StreamWriter, cmd: str, result: Rows) -> bool:
    """Stream `{"ok":true,"result":[row,...]}` a chunk at a time; False if a row failed."""
    rows = iter(result.rows)
    dumps = json.JSONEncoder(separators=_COMPACT).encode
    writer.write(b'{"ok":true,"result":[')
    first = True
    try:
        while chunk := list(islice(rows, ROWS_CHUNK)):
            text = ",".join(dumps(row) for row in chunk)
            writer.write(("" if first else ",").encode() + text.encode())
            first = False
            await writer.drain()
            await asyncio.sleep(0)  # the datagrams that arrived meanwhile come first
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        # Part of the line is out: an error response cannot follow it. Closing without the
        # line end makes vmgatectl report a broken answer instead of a shortened listing.
        log.exception("control command %r failed while streaming its rows", cmd)
        return False
    writer.write(b"]}\n")
    await writer.drain()
    return True


def _progress_writer(writer: asyncio.StreamWriter) -> Progress:
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < PROGRESS_EVERY:
            return
        last = now
        if not writer.is_closing():
            writer.write(json.dumps({"progress": done, "total": total}).encode() + b"\n")

    return progress


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: left behind by a daemon that died
        return
    finally:
        probe.close()
    raise ControlError(f"another vmgated is already running (it answers on {path})")


def _why_closed(reader: Any, cmd: str) -> str:
    """The daemon's last word on a connection it closed while we were still sending."""
    try:
        line = reader.readline(RESPONSE_LIMIT)
        message = json.loads(line) if line.endswith(b"\n") else {}
    except (OSError, ValueError):
        message = {}
    error = message.get("error") if isinstance(message, dict) else None
    if error:
        return f"vmgated refused {cmd!r}: {error}"
    return f"vmgated closed the control connection while {cmd!r} was being sent"


def call(
    path: str | os.PathLike[str],
    cmd: str,
    args: Mapping[str, Any] | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    timeout: float | None = 30.0,
) -> Any:
    """Run one command on the daemon and return its result (blocking; for vmgatectl).

    `timeout` bounds each wait for the next line, so a long operation that reports progress
    never times out. Raises DaemonNotRunning when nothing listens at `path`, ControlError
    with the daemon's message for an error response, TimeoutError when the daemon is silent.
    """
    path = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"vmgated is not running (no control socket at {path})"
                                   ) from exc
        except PermissionError as exc:
            raise ControlError(f"permission denied on {path}: run as root or as a member of "
                               "the vmgated group") from exc
        request = {"cmd": cmd, "args": dict(args or {})}
        reader = sock.makefile("rb")
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The daemon stopped reading (a request over REQUEST_LIMIT, or it went away); it
            # says why before it closes, if it can.
            raise ControlError(_why_closed(reader, cmd)) from exc
        while True:
            try:
                line = reader.readline(RESPONSE_LIMIT)
            except TimeoutError:
                raise TimeoutError(f"vmgated did not answer {cmd!r} within {timeout}s") from None
            if not line:
                raise ControlError(f"vmgated closed the control connection during {cmd!r}")
            if not line.endswith(b"\n"):
                raise ControlError(f"vmgated broke off its answer to {cmd!r} (see its log)")
            message = json.loads(line)
            if "progress" in message:
                if on_progress is not None:
                    on_progress(int(message["progress"]), int(message["total"]))
                continue
            if message.get("ok"):
                return message.get("result")
            raise ControlError(str(message.get("error", "unknown error")))
    except OSError as exc:
        if exc.errno == errno.ECONNRESET:
            raise ControlError(f"vmgated reset the control connection during {cmd!r}") from exc
        raise
    finally:
        sock.close()
