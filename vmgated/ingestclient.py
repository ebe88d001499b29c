"""The daemon's handle on its ingest process (vmgated/ingest.py): spawn, settings, frames, stop.

The frames arrive through an asyncio read-pipe protocol, so each is handled on the event
loop as soon as it is whole, like a listener's batch. When the process ends without being
asked (killed, crashed), `on_exit` is called with its exit status; the daemon replays what it
journalled past the last frame handled and starts another (`vmgated.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.sinkclient import FRAME, ROOT, dump_frame, interpreter
from vmgated.ingest import Frame, write_all
from vmgated.listeners import format_addr

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0  # for the process to send its last frames and exit at a stop


class _Reader(asyncio.Protocol):
    """Cuts the process's stdout into frames and hands each to `on_frame`."""

    def __init__(self, on_frame: Callable[[Frame], None], on_broken: Callable[[], None]) -> None:
        self.on_frame = on_frame
        self.on_broken = on_broken
        self.broken = False
        self.buf = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        buf = self.buf
        if buf:
            buf += data
            view = memoryview(buf)
        else:
            view = memoryview(data)  # whole frames straight from the chunk, uncopied
        try:
            pos, end = 0, len(view)
            while end - pos >= FRAME.size:
                (size,) = FRAME.unpack_from(view, pos)
                stop = pos + FRAME.size + size
                if stop > end:
                    break
                try:
                    frame = pickle.loads(view[pos + FRAME.size : stop])
                except Exception:
                    # A bug, not input: nothing after it can be trusted to line up. The
                    # process is killed; its journal from the last frame handled is replayed.
                    log.exception("ingest frame of %d bytes unreadable; ending the ingest "
                                  "process", size)
                    self.broken = True
                    self.on_broken()
                    return
                pos = stop
                try:
                    self.on_frame(frame)
                except Exception:
                    log.exception("ingest frame of %d bytes failed; continuing", size)
            rest = bytes(view[pos:]) if pos < end else b""
        finally:
            view.release()
        buf.clear()
        buf += rest

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class IngestProcess:
    """One ingest process at a time over a fixed set of bound sockets."""

    def __init__(
        self,
        directory: Path,
        socks: list[socket.socket],
        on_frame: Callable[[Frame], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.directory = directory
        self.socks = socks
        self.on_frame = on_frame
        self.on_exit = on_exit
        self.stopping = False
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: _Reader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return None if self._proc is None else self._proc.pid

    async def start(self, gen: int, settings: tuple[Any, ...]) -> None:
        """Spawn a process writing journal generation `gen`, reading the sockets (not once
        `stop` was called: a restart that races a stop must not leave one behind)."""
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        fds = [s.fileno() for s in self.socks]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmgated.ingest", str(self.directory), str(gen),
             str(os.getpid()), ",".join(map(str, fds))],
            executable=interpreter(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            pass_fds=fds, env=env,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self.started_at = loop.time()
        self.settings(*settings)
        reader = _Reader(self.on_frame, proc.kill)
        self._transport, _ = await loop.connect_read_pipe(lambda: reader, proc.stdout)
        self._reader = reader
        self._watch = loop.create_task(self._watch_exit(proc, reader))
        log.info("ingest process %d reads %s (journal ingest.%d)", proc.pid,
                 ", ".join(format_addr(s.getsockname()[:2]) for s in self.socks), gen)

    def settings(self, *values: Any) -> None:
        """Send the allow-list and auth key (at start and on each reload)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        try:
            write_all(proc.stdin.fileno(), dump_frame(("settings", *values)))
        except OSError as exc:  # it died: `_watch_exit` starts another, with the new values
            log.debug("ingest settings not sent: %s", exc)

    async def _watch_exit(self, proc: subprocess.Popen[bytes], reader: _Reader) -> None:
        await reader.closed  # every frame it sent is handled
        status = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        if proc.stdin is not None:
            proc.stdin.close()
        if not self.stopping:
            self.on_exit(status)

    async def stop(self) -> None:
        """Ask the process to stop (end of its input), handle its last frames, reap it."""
        self.stopping = True
        proc, reader = self._proc, self._reader
        if proc is None or reader is None:
            return
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(reader.closed), STOP_WAIT_S)
        except TimeoutError:
            log.error("ingest process %d did not stop in %.0f s: killed (what it journalled "
                      "and did not hand over is replayed at the next start)", proc.pid,
                      STOP_WAIT_S)
            proc.kill()
        await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        if self._transport is not None:
            self._transport.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

