"""The daemon: one asyncio loop (uvloop) wiring listeners, pipeline, ledger, metrics, control.

Start-up order matters for "nothing is lost": open the ledger, recover the dialog snapshot and
re-bill the calls it holds as pending, replay the journal tail, and only then open the
sockets. Shutdown is the reverse: close the sockets, drain the backlog into the ledger, write a
final snapshot, close the ledger (which flushes its queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ledger.errors import KeyConflict, LedgerError, LedgerFull, LedgerWriteFailed
from ledger.model import CallEntry, Receipt, Transaction
from ledger.store import Ledger
from rating.deck import paused_gc
from rating.pace import pacing
from sip.call import Addr
from sip.dialog import Tracker, TrackerState, encode_state
from vmgated import state, systemd
from vmgated.config import Config, ConfigError, ListenSpec, keep_restart_only, load_config
from vmgated.control import ControlError
from vmgated.heap import (
    GcClock,
    freeze_long_lived,
    freeze_new,
    release_free_heap,
    tune_collector,
)
from vmgated.hepparse import stamp_batch
from vmgated.ingest import Frame
from vmgated.ingestclient import IngestProcess
from vmgated.journal import CDR, HEP, SNAPSHOT_RETRY_S, Entry, IngestPosition, Journal, Recovered
from vmgated.listeners import InterfaceListeners, SourceDrops, UdpListener, format_addr
from vmgated.logpace import LogPace
from vmgated.metrics import (
    BalanceSummary,
    Counters,
    Histogram,
    MetricsCollector,
    MetricsServer,
    MetricsSettings,
)
from vmgated.pipeline import Billable, Pipeline, Runtime
from vmgated.planlock import lock_problems
from vmgated.procnet import PROC_FILES, UdpDropCounter, udp_queued
from vmgated.statedir import check_owner, explain, lock_state_dir

log = logging.getLogger("vmgated")
TICK_S = 1.0


def now_us() -> int:
    """Wall clock in EpochUs: receive times and expiry (call times come from HEP)."""
    return time.time_ns() // 1000


class App:
    """Owns every socket, file, task and signal of one daemon process."""

    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.counters = Counters()
        self.pending: dict[str, Billable] = {}
        self.backlog: deque[tuple[Billable, Transaction]] = deque()
        self.listeners: list[UdpListener | InterfaceListeners] = []
        self.client_last_seen: dict[str, int] = {}
        self.commit_hist = Histogram()
        self.stopping = asyncio.Event()
        self.started_us = now_us()
        self.last_reload: str = "never"
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_task: asyncio.Task[None] | None = None
        self.gc_clock = GcClock()
        # One reload at a time: a second SIGHUP (or `vmgatectl reload`) waits for the first.
        self._reload_lock = asyncio.Lock()
        self._state_lock = -1  # fd holding state_dir/vmgated.lock while running
        self._journal_log = LogPace()
        self.ingest_drops = SourceDrops(self.counters, "hep")
        self._ingest_where = ""  # the ingest process's sockets, for its drops' log lines
        self.ingest: IngestProcess | None = None
        self.ingest_pos = IngestPosition(0, 0)  # of the last ingest frame processed
        self._tick_log = LogPace()  # per tick step
        self._procnet_log = LogPace()

    # -- start ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the listeners, open the ledger, recover dialog state, then start reading."""
        cfg = self.config
        cfg.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        check_owner(cfg.state_dir)
        self._state_lock = lock_state_dir(cfg.state_dir)
        # Bound before recovery, read after it: datagrams that arrive while a restart restores
        # its dialogs and replays its journal (seconds at 100,000 calls in progress) wait in
        # the kernel's receive buffer instead of being refused.
        for spec in cfg.listen.hep:
            self.listeners.append(self._listener(spec, self._on_hep, "hep"))
        for spec in cfg.listen.cdr:
            self.listeners.append(self._listener(spec, self._on_cdr, "cdr"))
        inherited = systemd.listen_sockets()
        try:
            for listener in self.listeners:
                await listener.bind(inherited)
            for sock in inherited:
                log.warning("socket from systemd on %s matches no `listen:` entry; closed",
                            sock.getsockname())
                sock.close()
            tune_collector()  # before recovery: a journal replay allocates as traffic does
            await self._recover()
            frozen = freeze_long_lived()
            release_free_heap()
            log.info("heap: %d long-lived objects (config, rate decks, restored calls) frozen "
                     "out of the cycle collector's walks; collector thresholds %s", frozen,
                     gc.get_threshold())
            ingested = [item for item in self.listeners
                        if isinstance(item, UdpListener) and item.input_name == "hep"]
            for listener in self.listeners:
                if listener not in ingested:
                    await listener.start()
            if ingested:
                await self._start_ingest(ingested)
            await self._serve()
        except BaseException:
            await self._abort_start()
            raise

    async def _abort_start(self) -> None:
        """Undo a start that failed part-way (a port in use, an unwritable socket path...).

        Without it the process outlived its own error: an open ledger (then written by a
        SQLite thread that was not a daemon thread; now by a write process, which would exit
        with the daemon) kept the interpreter from exiting and systemd saw a hung start
        instead of a failed one. What recovery queued is committed by the close;
        the snapshot and journal are left as they are, so the next start recovers the same.
        """
        if self.ingest is not None:
            try:
                await self.ingest.stop()
            except Exception:
                log.exception("while undoing a failed start: stopping the ingest process")
        for listener in self.listeners:
            listener.stop()
        for task in self._tasks:
            task.cancel()
        for name in ("metrics", "control"):
            server = getattr(self, name, None)
            if server is not None:
                try:
                    await server.stop()
                except Exception:
                    log.exception("while undoing a failed start: stopping %s", name)
        ledger = getattr(self, "ledger", None)
        if ledger is not None:
            try:
                await ledger.close()
            except Exception:
                log.exception("while undoing a failed start: closing the ledger")
        journal = getattr(self, "journal", None)
        if journal is not None:
            journal.close()
        self.gc_clock.uninstall()
        self._release_state_dir()

    def _release_state_dir(self) -> None:
        fd = self._state_lock
        if fd >= 0:
            os.close(fd)  # releases the flock
            self._state_lock = -1

    async def _recover(self) -> None:
        """Open the ledger, load the dialog snapshot, bill what was pending, replay the journal."""
        cfg = self.config
        path = cfg.state_dir / "ledger.db"
        try:
            self.ledger = await Ledger.open(
                path,
                batch_max=cfg.ledger.batch_max,
                batch_ms=cfg.ledger.batch_ms,
                queue_max=cfg.ledger.queue_max,
            )
        except (sqlite3.Error, OSError) as exc:
            # SQLite's own words ("file is not a database") do not say which file.
            raise LedgerError(f"ledger {path}: {exc}") from exc
        self.ledger.on_commit = lambda _size, seconds: self.commit_hist.observe(seconds)
        self.journal = Journal(cfg.state_dir)
        recovered = self.journal.recover()
        tracker, pending = self._restore(recovered)
        runtime = await asyncio.get_running_loop().run_in_executor(None, Runtime.build, cfg)
        self.pipeline = Pipeline(runtime, tracker, self.counters, self._sink, now_us)
        for item in pending:
            self.pipeline.bill(item)
        replayed = self._replay(recovered.entries())
        # Every ingest journal present is in the state now: the next process writes a new one.
        self.ingest_pos = IngestPosition(self.journal.next_ingest_gen(), 0)
        if pending or replayed:
            log.info("recovered %d pending calls and %d journalled datagrams",
                     len(pending), replayed)

    def _replay(self, entries: Iterable[Entry]) -> int:
        """Feed the journalled datagrams through the pipeline again, in order, in batches."""
        feeds: dict[int, Callable[[list[tuple[bytes, Addr]]], object]] = {
            HEP: partial(self.pipeline.feed_hep, replaying=True),
            CDR: self.pipeline.feed_cdr,
        }
        senders: dict[str, Addr] = {}  # a proxy sends from a handful of addresses
        batch: list[tuple[bytes, Addr]] = []
        kind = HEP
        replayed = 0
        for entry in entries:
            if entry.kind not in feeds:
                continue  # not a kind this build writes: nothing to feed it to
            if (entry.kind != kind or len(batch) >= _REPLAY_BATCH) and batch:
                feeds[kind](batch)
                batch = []
            kind = entry.kind
            sender = senders.get(entry.sender)
            if sender is None:
                if len(senders) >= _REPLAY_BATCH:
                    senders.clear()
                sender = senders[entry.sender] = _split_sender(entry.sender)
            batch.append((entry.payload, sender))
            replayed += 1
        if batch:
            feeds[kind](batch)
        return replayed

    async def _serve(self) -> None:
        """Metrics, control socket, ticker and watchdog, once the listeners read."""
        cfg = self.config
        self.collector = MetricsCollector(
            self.counters,
            settings=self.metrics_settings(cfg),
            balances=_Balances(self),
            active_calls=self.active_by_party,
            udp_drops=self._udp_drops,
            queue_depth=lambda: self.ledger.queue_depth + len(self.backlog),
            ledger_commit=self.commit_hist,
            gc_clock=self.gc_clock,
            dialog_events=lambda: asdict(self.pipeline.tracker.stats),
        )
        self.gc_clock.install()
        self._drops = UdpDropCounter()
        assert cfg.listen.metrics.address is not None, "metrics listen needs an address"
        self.metrics = MetricsServer(self.collector, cfg.listen.metrics.address,
                                     cfg.listen.metrics.port)
        await self.metrics.start()
        from vmgated.commands import start_control  # control handlers need a started App

        self.control = await start_control(self, cfg.listen.control)
        self._tasks.append(asyncio.create_task(self._ticker()))
        interval = systemd.watchdog_interval()
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval)))

    def _listener(
        self, spec: ListenSpec, on_batch: Callable[[list[tuple[bytes, Addr]]], None], name: str
    ) -> UdpListener | InterfaceListeners:
        def make(host: str) -> UdpListener:
            # Read at call time: a socket opened after a reload (interface address change)
            # gets the running allow-list, not the one of the first config.
            return UdpListener(host, spec.port, on_batch, input_name=name,
                               counters=self.counters,
                               allowed=self.config.security.allowed_sources)

        if spec.interface is not None:
            return InterfaceListeners(spec.interface, make)
        assert spec.address is not None
        return make(spec.address)

    def _sockets(self) -> list[UdpListener]:
        out: list[UdpListener] = []
        for item in self.listeners:
            if isinstance(item, InterfaceListeners):
                out.extend(item.listeners.values())
            else:
                out.append(item)
        return out

    def _paced(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on this (worker) thread; at each of rating's yield points, wait while
        datagrams queue up in the kernel (`_give_way`), so the event loop keeps up."""
        with pacing(partial(_give_way, self._udp_queued)):
            return fn(*args)

    def _udp_queued(self) -> int:
        try:  # called from the reload's worker: a socket may close under it
            return udp_queued({s.inode for s in self._sockets() if s.started})
        except (OSError, ValueError):
            return 0

    def _udp_drops(self) -> int:
        drops = self._drops.read({s.inode for s in self._sockets() if s.started})
        if not self._drops.readable and self._procnet_log.due():
            log.warning("cannot read %s: vmgated_udp_receive_errors_total (kernel drops) is "
                        "stuck at its last value; the daemon needs /proc/self/net readable",
                        " or ".join(PROC_FILES))
        return drops

    @staticmethod
    def metrics_settings(cfg: Config) -> MetricsSettings:
        """Config-derived metric settings (swapped on reload)."""
        info = [("customer", c.id, c.billing_type) for c in cfg.customers]
        info += [("reseller", r.id, r.billing_type) for r in cfg.resellers]
        return MetricsSettings(
            currencies=(cfg.tenant.currency,),
            concurrent_ports_limit=cfg.subscription.limits.concurrent_ports,
            per_account=cfg.metrics.per_account,
            account_info=tuple(info),
            accounts=tuple([("customer", c.id) for c in cfg.customers]
                           + [("client", c.id) for c in cfg.vmgateclients]
                           + [("reseller", r.id) for r in cfg.resellers]),
        )

    def active_by_party(self) -> dict[tuple[str, str], int]:
        """Active calls per (trunk, client), attributed at scrape time."""
        attributor = self.pipeline.runtime.attributor
        out: dict[tuple[str, str], int] = {}
        # Per shared path, not per call: served on the loop, this is a stall of the UDP reader.
        for hops, capture_ids, calls in self.pipeline.tracker.active_paths():
            who = attributor.attribute_path(hops, capture_ids)
            key = (who.trunk or "unknown", who.client or "unknown")
            out[key] = out.get(key, 0) + calls
        return out

    def _restore(self, recovered: Recovered) -> tuple[Tracker, list[Billable]]:
        kwargs = {"max_duration_us": self.config.calls.max_duration_us}
        if recovered.damaged is not None:
            return self._without_snapshot(recovered.damaged, kwargs)
        if recovered.snapshot is None:
            return Tracker(**kwargs), []
        try:
            began = time.monotonic()
            tracker_state, pending = state.decode(recovered.snapshot)
            tracker = Tracker.restore_state(tracker_state, **kwargs)
            log.info("dialog snapshot: %d calls in progress, %d pending, restored in %.2f s",
                     len(tracker), len(pending), time.monotonic() - began)
            return tracker, pending
        except Exception as exc:  # whatever is wrong with the file
            return self._without_snapshot(exc, kwargs)

    def _without_snapshot(
        self, why: object, kwargs: dict[str, int]
    ) -> tuple[Tracker, list[Billable]]:
        """Start with no dialogs: never refuse to start over a bad snapshot (systemd would
        restart into the same failure for ever). The ledger is the truth and the journal is
        still replayed; the file is kept aside for whoever investigates (the next snapshot
        would overwrite it)."""
        try:
            kept: object = self.journal.set_aside_snapshot()
        except OSError as exc:  # a read-only directory must not stop the start either
            kept = f"nowhere ({exc.strerror}): the next snapshot replaces it"
        log.error("dialog snapshot unreadable (%s); starting with no active dialogs; the file "
                  "is kept as %s", why, kept)
        return Tracker(**kwargs), []

    # -- input ---------------------------------------------------------------------------
    def _on_hep(self, batch: list[tuple[bytes, Addr]]) -> None:
        stamp_batch(batch, now_us())
        self._journal(HEP, batch)
        self.pipeline.feed_hep(batch)

    # -- ingest process --------------------------------------------------------------------
    def _ingest_settings(self) -> tuple[object, ...]:
        sec = self.config.security
        allowed = None if sec.allowed_sources is None else tuple(sec.allowed_sources)
        return (allowed, sec.hep_auth_key)

    async def _start_ingest(self, listeners: list[UdpListener]) -> None:
        """Hand the HEP sockets bound to an address to an ingest process (vmgated.ingest)."""
        self._ingest_where = ", ".join(format_addr(item.sockname) for item in listeners)
        self.ingest = IngestProcess(self.journal.dir, [item.bound_socket for item in listeners],
                                    self._on_ingest, self._ingest_exited)
        await self.ingest.start(self.ingest_pos.gen, self._ingest_settings())

    def _on_ingest(self, frame: Frame) -> None:
        """One batch from the ingest process: count its drops, feed its messages."""
        (gen, offset, received, parsed, notices, source, oversized, dropped_from, unjournalled,
         error) = frame  # fmt: skip
        try:
            if source or oversized:
                self.ingest_drops.count(source, oversized, dropped_from, self._ingest_where)
            if unjournalled:
                self._journal_failed(unjournalled, error)
            if notices:
                self.pipeline.notice(notices)
            self.pipeline.feed_parsed(parsed, received, wire=True)
        finally:
            self.ingest_pos = IngestPosition(gen, offset)

    def _ingest_exited(self, status: int) -> None:
        """The ingest process ended unasked: replay its journal past the last frame we
        handled (it journals before it sends), then start another on a new generation."""
        log.error("ingest process exited with status %d; replaying what it journalled past "
                  "the last batch it handed over, then starting another", status)
        task = asyncio.get_running_loop().create_task(self._restart_ingest())
        self._tasks.append(task)

    async def _restart_ingest(self) -> None:
        ingest = self.ingest
        assert ingest is not None
        replayed = self._replay(self.journal.ingest_tail(self.ingest_pos))
        self.ingest_pos = IngestPosition(self.journal.next_ingest_gen(), 0)
        self.counters.count_packets("ingest", "restart")
        self.counters.count_packets("ingest", "replayed", replayed)
        log.info("replayed %d datagrams the ingest process had journalled", replayed)
        # A process that dies at once (a broken install) is not restarted in a tight loop;
        # meanwhile datagrams wait in the sockets' receive buffers.
        if asyncio.get_running_loop().time() - ingest.started_at < INGEST_RESTART_S:
            await asyncio.sleep(INGEST_RESTART_S)
        while not self.stopping.is_set():
            try:
                await ingest.start(self.ingest_pos.gen, self._ingest_settings())
                return
            except Exception:  # fork refused (memory, process limit): try again, said each time
                log.exception("ingest process not started; next try in %.0f s",
                              INGEST_RESTART_S)
                await asyncio.sleep(INGEST_RESTART_S)

    def _on_cdr(self, batch: list[tuple[bytes, Addr]]) -> None:
        self._journal(CDR, batch)
        self.pipeline.feed_cdr(batch)

    def _journal(self, kind: int, batch: list[tuple[bytes, Addr]]) -> None:
        """Journal a batch; if that fails (disk full), bill it anyway and say so.

        Dropping the batch because it could not be made crash-safe would lose for certain
        what a crash only might: its calls are billed as usual, only a `kill -9` before they
        end would lose them. Counted as `vmgated_packets_total{input="journal",
        result="write_error"}` per datagram, logged at most every LOG_EVERY seconds.
        """
        try:
            self.journal.append(kind, batch)
        except OSError as exc:
            self._journal_failed(len(batch), exc)

    def _journal_failed(self, count: int, exc: object) -> None:
        self.counters.packets[("journal", "write_error")] += count
        if self._journal_log.due():
            log.error("journal write failed (%s): datagrams are billed but not crash-safe "
                      "until it can write again; counted as "
                      "vmgated_packets_total{input=\"journal\",result=\"write_error\"}", exc)

    # -- ledger sink -----------------------------------------------------------------------
    def _sink(self, item: Billable, tx: Transaction) -> None:
        self.pending[tx.key] = item
        if self.backlog:
            self.backlog.append((item, tx))  # keep order behind earlier refusals
            return
        self._submit(item, tx)

    def _submit(self, item: Billable, tx: Transaction) -> bool:
        try:
            fut = self.ledger.submit_nowait(tx)
        except LedgerFull:
            # UDP senders cannot be slowed down, so a stalled disk grows this backlog in
            # memory (exported as queue depth); every item is also in `pending`, hence in the
            # dialog snapshot, so even a crash now loses nothing.
            self.backlog.append((item, tx))
            return False
        except (KeyConflict, ValueError) as exc:
            self._refused(tx, exc)
            return True
        fut.add_done_callback(partial(self._acked, item, tx))
        return True

    def _acked(self, item: Billable, tx: Transaction, fut: asyncio.Future[Receipt]) -> None:
        if fut.cancelled():
            return  # shutdown: the call stays in `pending`, hence in the final snapshot
        exc = fut.exception()
        if isinstance(exc, LedgerWriteFailed):
            # SQLite refused the whole group (disk full, I/O error): nothing of it was written
            # and the call is not at fault. It stays in `pending` (so in the snapshot) and is
            # retried from the backlog every tick, or billed at the next start if stopping.
            self.counters.count_packets("ledger", "retry")
            if not self.stopping.is_set():
                self.backlog.append((item, tx))
            return
        self.pending.pop(tx.key, None)
        if exc is not None:
            self._refused(tx, exc)
            return
        if not fut.result().existed and tx.call is not None:
            self.record_call(tx.call)

    def record_call(self, entry: CallEntry) -> None:
        """Count a newly committed call in the metrics (never for a duplicate)."""
        unrated = next((leg.unrated for leg in entry.legs if leg.unrated), None)
        self.counters.record_call(
            customer=entry.customer, client=entry.client, trunk=entry.trunk,
            disposition=entry.disposition, billsec=entry.billsec, unrated_reason=unrated,
            negative_margin=entry.margin < 0,
        )
        if entry.client is not None:
            self.client_last_seen[entry.client] = max(
                entry.end, self.client_last_seen.get(entry.client, 0))

    def record_rerate(self, old: CallEntry, new: CallEntry) -> None:
        """Count a committed rerate: a call that now rates at a loss is a negative-margin call."""
        if new.margin < 0 and not (old.margin < 0 and "unrated" not in old.flags):
            self.counters.negative_margin += 1

    def _refused(self, tx: Transaction, exc: BaseException) -> None:
        self.pending.pop(tx.key, None)
        self.counters.count_packets("ledger",
                                    "conflict" if isinstance(exc, KeyConflict) else "refused")
        log.warning("ledger refused %s: %s", tx.key, exc)

    def drain_backlog(self) -> None:
        """Resubmit calls the full queue refused, in order, until it refuses again."""
        while self.backlog:
            item, tx = self.backlog[0]
            self.backlog.popleft()
            if not self._submit(item, tx):
                # _submit re-appended it at the end; put it back in front to keep order.
                self.backlog.appendleft(self.backlog.pop())
                return

    # -- periodic --------------------------------------------------------------------------
    async def _ticker(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), TICK_S)
            self.tick()

    async def _watchdog(self, interval: float) -> None:
        # Its own task at half the timeout (sd_watchdog_enabled(3)): a WatchdogSec shorter
        # than two ticks must not kill a healthy daemon; a blocked loop still stops the pings.
        while not self.stopping.is_set():
            systemd.watchdog_ping()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval / 2)

    def tick(self) -> None:
        """Expire overdue dialogs, retry the backlog, persist dialog state.

        Each step on its own: one that raises (a bug, or a snapshot's new journal file that
        cannot be created) is logged at most every LOG_EVERY seconds and the others still
        run, now and at the next tick. An exception escaping here used to end the ticker
        task for good: no more expiry, backlog retries or snapshots, and nothing said.
        """
        for step in (self.pipeline.expire, self.drain_backlog, self._maybe_snapshot):
            try:
                step()
            except Exception:
                if self._tick_log.due(step.__name__):
                    log.exception("periodic %s failed; the daemon goes on", step.__name__)

    def _maybe_snapshot(self) -> None:
        if not self.journal.checkpoint_due():  # spaced by its cost (vmgated.journal)
            return
        try:
            captured = self._capture()
        except BaseException:
            self.journal.checkpoint_done(failed=True)
            raise
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._snapshot(*captured), name="dialog-snapshot"
        )

    def _capture(self) -> tuple[int, TrackerState, list[Billable], IngestPosition]:
        """Copy the dialog state and start the next journal, with no batch in between; with
        the ingest journal position that state goes to."""
        captured = self.pipeline.tracker.capture()
        pending = list(self.pending.values())
        return self.journal.begin_checkpoint(), captured, pending, self.ingest_pos

    async def _snapshot(self, gen: int, captured: TrackerState, pending: list[Billable],
                        ingest: IngestPosition) -> None:
        """Encode and write a captured state on a worker thread (vmgated.journal)."""
        failed = True
        try:
            await asyncio.to_thread(self._write_snapshot, gen, captured, pending, ingest)
            failed = False
        except OSError as exc:  # disk full, a read-only or vanished directory: one line
            if self._tick_log.due("snapshot"):
                log.error("dialog snapshot not written (the journal keeps every datagram; "
                          "next try in %.0f s): %s", SNAPSHOT_RETRY_S,
                          explain(exc, self.config.state_dir))
        except Exception:
            if self._tick_log.due("snapshot"):
                log.exception("dialog snapshot not written (the journal keeps every datagram)")
        finally:
            self.journal.checkpoint_done(failed)

    def _write_snapshot(self, gen: int, captured: TrackerState, pending: list[Billable],
                        ingest: IngestPosition) -> None:
        self.journal.write_snapshot(gen, state.encode_pieces(encode_state(captured), pending),
                                    ingest)

    def checkpoint(self) -> None:
        """Write the dialog snapshot (tracker + uncommitted calls) and rotate the journal, now.

        On the loop, blocking (for a clean stop); `tick` takes them in the background.
        """
        gen, captured, pending, ingest = self._capture()
        try:
            self._write_snapshot(gen, captured, pending, ingest)
        finally:
            self.journal.checkpoint_done()

    # -- reload ----------------------------------------------------------------------------
    async def reload(self) -> str:
        """Load config and decks beside the running ones; swap only if all of it is valid."""
        await self.reload_detail()
        return "reloaded"

    async def reload_detail(self) -> tuple[str, ...]:
        """`reload`, returning the settings the file changed that wait for a restart
        (`config.keep_restart_only`), one line each."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> tuple[str, ...]:
        systemd.reloading()
        try:
            with paused_gc():
                old, pending = await self._swap_config()
            # The old decks are ~1.3 million objects with three 100,000-prefix plans: freed
            # on the loop that is a 170 ms stall, freed in a worker it only shares the GIL.
            await asyncio.get_running_loop().run_in_executor(None, old.clear)
            return pending
        finally:
            systemd.ready()

    async def read_config(self) -> Config:
        """The config file and its decks as they are now, parsed in a worker that gives way
        to traffic (`rating.pace`); raises ConfigError. The running config is untouched."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self._paced, load_config, self.config_path
        )

    async def plan_lock_problems(self, new: Config) -> list[str]:
        """What the plan lock (SPEC §5) refuses when the running plans become `new`'s.

        For a reload, and for `vmgatectl check` asking before one (the running plans and the
        ledger's history are only here, not in the files an offline check can read).
        """
        used = await self.ledger.used_rate_rows()
        return await asyncio.get_running_loop().run_in_executor(
            None, self._paced, lock_problems, self.config.plans, new.plans, used, plan_files(new)
        )

    async def _swap_config(self) -> tuple[list[object], tuple[str, ...]]:
        """Load, check and build the new config, swap it in; return the old one to release,
        and the settings changed in the file that only a restart applies (kept as running).

        The heavy parts (deck parsing, the plan-lock comparison, prefix indexes) run in a
        worker that gives way to the event loop every few hundred rows (`rating.pace`), so
        traffic keeps priority and the reload takes longer instead.
        """
        loop = asyncio.get_running_loop()
        try:
            new = await self.read_config()
        except ConfigError as exc:
            msg = f"reload refused, keeping the running config:\n{exc}"
            log.error("%s", msg)
            raise RuntimeError(msg) from exc
        problems = await self.plan_lock_problems(new)
        if problems:
            msg = "reload refused (plan lock), keeping the running config:\n" + "\n".join(
                problems
            )
            log.error("%s", msg)
            raise RuntimeError(msg)
        new, pending = keep_restart_only(self.config, new)
        runtime = await loop.run_in_executor(None, self._paced, Runtime.build, new)
        old: list[object] = [self.config, self.pipeline.runtime]
        self.config = new
        self.pipeline.runtime = runtime
        self.pipeline.tracker.max_duration_us = new.calls.max_duration_us
        allowed = new.security.allowed_sources
        for sock in self._sockets():
            sock.sources.set_allowed(allowed)
        if self.ingest is not None:
            self.ingest.settings(*self._ingest_settings())
        self.collector.settings = self.metrics_settings(new)
        self.last_reload = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # The new decks are the next long-lived objects (vmgated.heap): frozen unwalked.
        frozen = freeze_new()
        log.info("reloaded %s (%d objects frozen)", self.config_path, frozen)
        if pending:
            log.warning("reload: not applied until vmgated restarts (the running values are "
                        "kept):\n%s", "\n".join(pending))
        return old, pending

    # -- stop ------------------------------------------------------------------------------
    async def stop(self) -> bool:
        """Stop listening, flush every pending call into the ledger, persist, close.

        False when the dialog snapshot could not be written (disk full, read-only state dir):
        the calls in memory then survive only as far as the journal holds them, which the
        log says in one CRITICAL line and the exit status shows (`serve` returns 1).
        """
        systemd.stopping()
        if self.ingest is not None:
            await self.ingest.stop()  # after its last frames are handled
        for listener in self.listeners:
            listener.stop()
        for task in self._tasks:
            task.cancel()
        await self.metrics.stop()
        await self.control.stop()
        # Hand the backlog to the ledger's queue; closing the ledger then commits the queue at
        # once (not after the group-commit window). Whatever is still uncommitted stays in the
        # snapshot's pending list and is billed at the next start, so a slow or failing disk
        # delays billing but never loses it.
        deadline = time.monotonic() + 30
        while self.backlog and time.monotonic() < deadline:
            self.drain_backlog()
            if self.backlog:
                await asyncio.sleep(0.01)
        try:
            await self.ledger.close()
        finally:
            await asyncio.sleep(0)  # run the commit callbacks that clear `pending`
            if self._snapshot_task is not None:
                await self._snapshot_task  # one snapshot at a time: the journal needs that
            try:
                saved = self._final_checkpoint()
            finally:
                self.journal.close()
                self.gc_clock.uninstall()
                self._release_state_dir()
        return saved

    def _final_checkpoint(self) -> bool:
        """`checkpoint` at stop; on OSError say what survives, in one line, and return False.

        The older snapshot and every journal since stay on disk (only a snapshot that is
        written removes them), so the next start recovers each call whose datagrams were
        journalled; datagrams the journal could not write either are in memory only.
        """
        in_progress, uncommitted = len(self.pipeline.tracker), len(self.pending)
        try:
            self.checkpoint()
        except OSError as exc:
            unjournalled = self.counters.packets[("journal", "write_error")]
            log.critical(
                "dialog snapshot not written at stop: %s. %d calls not yet in the ledger and "
                "%d calls in progress are recovered at the next start only from the journal; "
                "%d datagrams since start could not be journalled either, and calls that "
                "depend on them are lost (make room in the state directory before a restart)",
                explain(exc, self.config.state_dir), uncommitted, in_progress, unjournalled,
            )
            return False
        if uncommitted:
            log.warning("stopped with %d calls not yet in the ledger: they are in the dialog "
                        "snapshot and are billed at the next start", uncommitted)
        return True


class _Balances:
    """The ledger's live projection seen through the metrics' BalanceSource protocol."""

    def __init__(self, app: App) -> None:
        self.app = app

    def summary(self, currency: str) -> BalanceSummary:
        s = self.app.ledger.balances.summary(currency)
        return BalanceSummary(s.my_balance, s.customer_total, s.owed_to_vmgateclients,
                              s.owed_to_resellers)

    def accounts(self, currency: str) -> list[tuple[str, str, int]]:
        return list(self.app.ledger.balances.accounts(currency))


def plan_files(config: Config) -> dict[str, str]:
    """Plan name → where it is declared (its deck file, else the config file)."""
    return {p.name: str(p.deck) if p.deck is not None else str(config.path)
            for p in config.rate_plans}


_REPLAY_BATCH = 512  # journalled datagrams per pipeline call when replaying
INGEST_RESTART_S = 1.0  # an ingest process that lived less than this is restarted after it


def _split_sender(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return (host, int(port) if port.isdigit() else 0)


GIVE_WAY_S = 0.001  # one wait step of a reload's worker at a yield point
QUEUED_MAX = 256 << 10  # kernel bytes queued (~110 datagrams) above which the worker waits
WAIT_MAX_S = 0.05  # longest wait at one yield point: an overloaded daemon still reloads
T = TypeVar("T")


def _give_way(queued: Callable[[], int]) -> None:
    # Traffic first: while datagrams wait in the kernel, the build waits with them, in real
    # sleeps (a zero sleep would hand the GIL back to this thread before the loop's wakes).
    # Queue-driven, not a fixed duty cycle: the loop's need grows with the packet rate, and an
    # idle daemon reloads at full speed.
    deadline = time.monotonic() + WAIT_MAX_S
    while queued() > QUEUED_MAX and time.monotonic() < deadline:
        time.sleep(GIVE_WAY_S)


async def serve(config_path: Path, reload_asked: Callable[[], bool] = lambda: False) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit code.

    `reload_asked`: whether a SIGHUP came before the daemon was ready (`vmgated.main` notes
    them from its first line); one reload is then run right after start.
    """
    try:
        config = load_config(config_path)
    except (ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    app = App(config_path, config)
    try:
        await app.start()
    except (OSError, ControlError, LedgerError, sqlite3.Error) as exc:
        # An address in use, a missing directory for the control socket, another daemon on
        # it, a ledger it cannot open: said in one line, and the process exits (systemd sees
        # the failure). Anything else keeps its traceback, and exits too (`_abort_start`).
        log.error("cannot start: %s", explain(exc, config.state_dir))
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.stopping.set)
    loop.add_signal_handler(signal.SIGINT, app.stopping.set)

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        async def go() -> None:
            with contextlib.suppress(RuntimeError):  # already logged; the old config runs on
                await app.reload()

        task = asyncio.ensure_future(go())
        reloads.add(task)  # keep a reference until done (asyncio holds tasks weakly)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if reload_asked():
        log.info("a reload was asked while starting: reloading now")
        on_hup()
    systemd.ready()
    systemd.status("listening")
    log.info("vmgated ready: hep %s, metrics %s:%d, control %s",
             ", ".join(str(s) for s in config.listen.hep), config.listen.metrics.address,
             config.listen.metrics.port, config.listen.control)
    await app.stopping.wait()
    log.info("stopping: draining and flushing the ledger")
    return 0 if await app.stop() else 1


def run(config_path: Path, reload_asked: Callable[[], bool] = lambda: False) -> int:
    """Entry point used by `vmgated.main`: uvloop when available."""
    try:
        import uvloop

        return uvloop.run(serve(config_path, reload_asked))
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return asyncio.run(serve(config_path, reload_asked))
