"""Server side of `vmgatectl`'s live commands, registered on the control socket.

Reports that only read history (calls, payments, balances, ledger verify) are served by the CLI
straight from the ledger file (read-only), so they work with the daemon stopped. What needs the
live process comes here: status, reload, active calls, money writes (pay/payout, whose reply
means "durably in the ledger"), rerate, CDR import, replay and the live rosters.

Replay and CDR import are chunked by the CLI (it reads the file and shows the progress bar);
a replay gets its own tracker, clocked by capture time, so old traffic never mixes with live
dialogs and the result equals the live run's.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import transactions
from ledger.errors import KeyConflict
from ledger.model import AccountKind, Transaction, account
from rating.units import UnitError, format_micros, format_time, parse_amount
from sip.dialog import Tracker
from sip.hep import stamp_v1
from vmgated.config import ConfigError
from vmgated.control import ControlError, ControlServer, Rows
from vmgated.metrics import Counters
from vmgated.pipeline import Billable, Pipeline

if TYPE_CHECKING:
    from vmgated.app import App

log = logging.getLogger("vmgated.commands")
ONLINE_WINDOW_US = 300 * 1_000_000  # a client that carried a call in the last 5 min is online
REPLAY_IDLE_S = 600.0
"""A replay session with no chunk for this long is dropped (its CLI died or was interrupted):
its tracker's open dialogs are discarded unbilled; running the replay again bills them, and
what the first run committed comes back as already billed (keys are the calls' ids)."""
Handler = Callable[[dict[str, Any], Callable[[int, int], None]], Awaitable[object]]


class CommandError(ControlError):
    """A refusal the clerk should read (bad amount, unknown customer...).

    A ControlError, so the server answers it as a plain error (no traceback in the log).
    """


@dataclass
class ReplaySession:
    """One `vmgatectl replay` in progress: its own tracker and submitted transactions."""

    pipeline: Pipeline
    submitted: list[Transaction] = field(default_factory=list)
    last_ts: int = 0
    touched: float = field(default_factory=time.monotonic)


def reap_replays(replays: dict[str, ReplaySession], now: float,
                 idle_s: float = REPLAY_IDLE_S) -> list[str]:
    """Drop the sessions idle for `idle_s` or more; their ids, for the log."""
    gone = [sid for sid, session in replays.items() if now - session.touched >= idle_s]
    for sid in gone:
        del replays[sid]
    return gone


class Commands:
    """The live command handlers, bound to one App."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.replays: dict[str, ReplaySession] = {}

    def handlers(self) -> Mapping[str, Handler]:
        """Command name → handler, for the control server."""
        return {
            "status": self.status,
            "reload": self.reload,
            "calls_active": self.calls_active,
            "balances": self.balances,
            "pay": self.pay,
            "payout": self.payout,
            "resellers": self.resellers,
            "clients": self.clients,
            "rerate": self.rerate,
            "cdr_import": self.cdr_import,
            "replay_begin": self.replay_begin,
            "replay_chunk": self.replay_chunk,
            "replay_end": self.replay_end,
            "check_lock": self.check_lock,
        }

    # -- state ---------------------------------------------------------------------------
    async def status(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """Uptime, config, listeners, active calls, queue and ledger head."""
        app = self.app
        seq, digest = await app.ledger.head()
        return {
            "config": str(app.config_path),
            "state_dir": str(app.config.state_dir),
            "uptime_s": (time.time_ns() // 1000 - app.started_us) // 1_000_000,
            "listeners": [listener.describe() for listener in app.listeners],
            "active_calls": len(app.pipeline.tracker),
            "pending_commits": len(app.pending),
            "backlog": len(app.backlog),
            "ledger_queue": app.ledger.queue_depth,
            "ledger_head": {"seq": seq, "hash": digest},
            "last_reload": app.last_reload,
            "packets": {f"{i}/{r}": n for (i, r), n in sorted(app.counters.packets.items())},
        }

    async def reload(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """SIGHUP equivalent; the refusal (file, line, field) comes back as the error."""
        try:
            pending = await self.app.reload_detail()
            return {"result": "reloaded", "restart_needed": list(pending)}
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc

    async def calls_active(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Calls in progress with their attribution (answered or ringing), oldest first.

        Filtered like the history (`customer`, `trunk`, `client`, `reseller` — `direct` for
        none —, `since` inclusive and `until` exclusive on the start, `limit` rows at most,
        all when None). Streamed (`Rows`): at 100,000 calls, building and encoding the whole
        listing at once stalled the event loop for 1.5 s.
        """
        wanted = {k: _opt_text(args, k) for k in ("customer", "trunk", "client", "reseller")}
        since, until, limit = _opt_int(args, "since"), _opt_int(args, "until"), _opt_int(
            args, "limit")
        if limit is not None and limit < 0:
            raise CommandError(f"limit: {limit} is negative")
        parties = [(k, v) for k, v in wanted.items() if v is not None]
        app = self.app
        attributor = app.pipeline.runtime.attributor
        calls = app.pipeline.tracker.active()  # copies its table when the first row is read

        def rows() -> Iterator[dict[str, Any]]:
            left = limit
            for call in calls:
                if left is not None and left <= 0:
                    return
                if (since is not None and call.start < since) or (
                    until is not None and call.start >= until
                ):
                    continue
                who = attributor.attribute_path(call.hops, call.capture_ids)
                if parties and any(getattr(who, k) != v for k, v in parties):
                    continue
                if left is not None:
                    left -= 1
                yield {
                    "call_id": call.call_id, "trunk": who.trunk, "customer": who.customer,
                    "client": who.client, "network": who.network, "reseller": who.reseller,
                    "caller": call.caller, "callee": call.callee,
                    "start": format_time(call.start), "answer": format_time(call.answer),
                }

        return Rows(rows())

    async def check_lock(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Whether a reload of the daemon's config file, as it is now, passes the plan lock.

        `config`: the file `vmgatectl check` read; checked only if it is the one this daemon
        runs (another file's plans are not what the running ones would become).
        """
        app = self.app
        path = _opt_text(args, "config")
        if path is None or Path(path).resolve() != Path(app.config_path).resolve():
            return {"checked": False, "why": f"the daemon runs {app.config_path}"}
        try:
            new = await app.read_config()
        except ConfigError as exc:
            return {"checked": False, "why": f"the daemon could not load it: {exc}"}
        return {"checked": True, "problems": await app.plan_lock_problems(new)}

    async def balances(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """The live projection (same numbers /metrics exports)."""
        cur = self.app.config.tenant.currency
        bal = self.app.ledger.balances
        s = bal.summary(cur)
        return {
            "currency": cur,
            "my_balance": format_micros(s.my_balance),
            "customer_total": format_micros(s.customer_total),
            "owed_to_vmgateclients": format_micros(s.owed_to_vmgateclients),
            "owed_to_resellers": format_micros(s.owed_to_resellers),
            "accounts": [
                {"kind": kind, "id": ident, "balance": format_micros(amount)}
                for kind, ident, amount in bal.accounts(cur)
            ],
        }

    # -- money -----------------------------------------------------------------------------
    def _amount(self, args: dict[str, Any]) -> int:
        try:
            amount = parse_amount(str(args.get("amount", "")))
        except UnitError as exc:
            raise CommandError(f"amount: {exc}") from exc
        if amount <= 0:
            raise CommandError("amount: must be greater than 0")
        return amount

    def _ref(self, args: dict[str, Any]) -> str:
        ref = str(args.get("ref") or "").strip()
        if not ref:
            raise CommandError("--ref is required: the reference makes the payment idempotent")
        return ref

    async def _commit(self, tx: Transaction) -> object:
        try:
            receipt = await self.app.ledger.submit(tx)
        except KeyConflict as exc:
            # The reference is the idempotency key: reusing it for another payment is the
            # clerk's mistake to correct, not a daemon failure.
            raise CommandError(
                f"reference {tx.key!r} is already recorded with different content ({exc}); "
                "use a new --ref for a new payment"
            ) from exc
        return {"key": receipt.key, "seq": receipt.seq, "hash": receipt.hash,
                "existed": receipt.existed}

    async def pay(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """Customer payment IN: customer +A, external −A (durable when this returns)."""
        cfg = self.app.config
        customer = str(args.get("customer", ""))
        if cfg.customer(customer) is None:
            raise CommandError(f"unknown customer {customer!r}; known: "
                               f"{', '.join(c.id for c in cfg.customers)}")
        tx = transactions.payment_in(customer, self._amount(args), self._ref(args),
                                     time.time_ns() // 1000, cfg.tenant.currency)
        return await self._commit(tx)

    async def payout(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """VMGateClient or reseller payout OUT: target −A, external +A."""
        cfg = self.app.config
        kind, ident = str(args.get("kind", "")), str(args.get("id", ""))
        amount, ref, now = self._amount(args), self._ref(args), time.time_ns() // 1000
        if kind == "client":
            if cfg.client(ident) is None:
                raise CommandError(f"unknown VMGateClient {ident!r}")
            tx = transactions.client_payout(ident, amount, ref, now, cfg.tenant.currency)
        elif kind == "reseller":
            if cfg.reseller(ident) is None:
                raise CommandError(f"unknown reseller {ident!r}")
            tx = transactions.reseller_payout(ident, amount, ref, now, cfg.tenant.currency)
        else:
            raise CommandError("payout target must be 'client' or 'reseller'")
        return await self._commit(tx)

    # -- rosters -----------------------------------------------------------------------------
    def _online(self) -> set[str]:
        app = self.app
        attributor = app.pipeline.runtime.attributor
        online = {
            attributor.attribute_path(hops, capture_ids).client
            for hops, capture_ids, _ in app.pipeline.tracker.active_paths()
        }
        horizon = time.time_ns() // 1000 - ONLINE_WINDOW_US
        online.update(c for c, seen in app.client_last_seen.items() if seen >= horizon)
        online.discard(None)
        return {c for c in online if c is not None}

    async def clients(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """VMGateClients with network, reseller, plan, online flag and balance."""
        cfg, online = self.app.config, self._online()
        bal = self.app.ledger.balances
        cur = cfg.tenant.currency
        return [
            {"id": c.id, "name": c.name, "network": c.network,
             "reseller": c.reseller or "direct", "join_code": c.join_code,
             "rate_plan": c.rate_plan, "online": c.id in online,
             "balance": format_micros(bal.get(cur, account(AccountKind.CLIENT, c.id)))}
            for c in cfg.vmgateclients
        ]

    async def resellers(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """The reseller roster of the seeds' Resellers page."""
        cfg, online = self.app.config, self._online()
        bal = self.app.ledger.balances
        cur = cfg.tenant.currency
        out = []
        for r in cfg.resellers:
            mine = [c.id for c in cfg.vmgateclients if c.reseller == r.id]
            out.append({
                "id": r.id, "name": r.name, "company": r.company, "email": r.email,
                "clients": len(mine), "online": sum(1 for c in mine if c in online),
                "balance": format_micros(bal.get(cur, account(AccountKind.RESELLER, r.id))),
                "billing_type": r.billing_type, "status": r.status,
            })
        return out

    # -- rerate / import / replay -------------------------------------------------------------
    async def rerate(self, args: dict[str, Any], progress: Callable[[int, int], None]) -> object:
        """Rate unrated calls again with the running plans (reversal + new transaction)."""
        app = self.app
        calls = await app.ledger.unrated_calls()
        cur = app.config.tenant.currency
        rerated = still = 0
        for i, old in enumerate(calls, 1):
            new = app.pipeline.rerate_entry(old)
            if new.flags == old.flags and new.legs == old.legs:
                still += 1
            else:
                reversal, fresh = transactions.rerate(old, new, cur, time.time_ns() // 1000)
                # One SQLite transaction for the pair: a reversal never lands without its new
                # rating, whatever happens to the process in between.
                receipts = await app.ledger.submit_linked((reversal, fresh))
                if not receipts[1].existed:
                    app.record_rerate(old, new)
                rerated += 1
            progress(i, len(calls))
        return {"examined": len(calls), "rerated": rerated, "still_unrated": still}

    async def cdr_import(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Bill a chunk of CDR lines (the CLI sends a file in chunks); returns per-line errors."""
        from vmgated.cdr import CdrError, parse_line

        app = self.app
        lines: list[str] = list(args.get("lines", []))
        errors: list[str] = []
        txs: list[tuple[int, Transaction]] = []
        for n, line in enumerate(lines, int(args.get("first_line", 1))):
            if not line.strip():
                continue
            try:
                cdr = parse_line(line, None, app.pipeline.tracker.max_duration_us)
            except CdrError as exc:
                errors.append(f"{n}: {exc}")  # the CLI prefixes the file: `FILE:LINE: ...`
                continue
            txs.append((n, app.pipeline.transaction(Billable(cdr.uid, cdr.record, cdr.trunk,
                                                             cdr.client))))
        billed = existed = 0
        for n, tx in txs:
            try:
                receipt = await app.ledger.submit(tx)
            except KeyConflict:
                errors.append(f"{n}: call_id: {tx.call.call_id if tx.call else tx.key!r} is "
                              "already billed with different content (times or parties); "
                              "not billed again")
                continue
            if receipt.existed:
                existed += 1
            else:
                billed += 1
                if tx.call is not None:
                    app.record_call(tx.call)
        errors.sort(key=lambda e: int(e.split(":", 1)[0]))
        return {"billed": billed, "already_billed": existed, "errors": errors}

    async def replay_begin(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Start a replay session with its own tracker."""
        app = self.app
        for sid in reap_replays(self.replays, time.monotonic()):
            log.warning("replay session %s idle for %.0f s: dropped", sid, REPLAY_IDLE_S)
        session_id = f"r{time.time_ns()}"
        # Its own packet counters: what a replay drops is reported to whoever replays (and
        # is not the live feed's, so it stays out of vmgated_packets_total).
        session = ReplaySession(pipeline=Pipeline(
            app.pipeline.runtime,
            Tracker(max_duration_us=app.config.calls.max_duration_us),
            Counters(),
            lambda item, tx: session.submitted.append(tx),
            lambda: session.last_ts,
            capture_clocked=True,
        ))
        self.replays[session_id] = session
        return {"session": session_id}

    async def replay_chunk(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Feed a chunk of captured datagrams: `hep` items or raw `sip` with ts/src/dst."""
        session = self._replay(args)
        for item in args.get("items", []):
            payload = base64.b64decode(item["data"])
            if item.get("hep"):
                if payload[:1] == b"\x01" and item.get("ts"):
                    # HEPv1 has no time of its own: the capture file's record time stands in.
                    payload = stamp_v1(payload, int(item["ts"]))
                session.pipeline.feed_hep([(payload, ("0.0.0.0", 0))])
            else:
                src, dst, ts = tuple(item["src"]), tuple(item["dst"]), int(item["ts"])
                session.pipeline.feed_sip(payload, ts, (src[0], src[1]), (dst[0], dst[1]))
            session.last_ts = max(session.last_ts, int(item.get("ts", 0)))
        return await self._flush_replay(session)

    async def replay_end(
        self, args: dict[str, Any], progress: Callable[[int, int], None]
    ) -> object:
        """Close what the capture left open (as the live daemon would) and commit it all."""
        session = self._replay(args)
        del self.replays[str(args["session"])]
        horizon = session.last_ts + self.app.config.calls.max_duration_us + 3_600_000_000
        session.pipeline.expire(horizon)
        result = await self._flush_replay(session)
        result["active_left"] = len(session.pipeline.tracker)
        dropped: dict[str, int] = {}
        for (_, reason), n in sorted(session.pipeline.counters.packets.items()):
            if reason != "ok" and n:
                dropped[reason] = dropped.get(reason, 0) + n
        result["dropped"] = dropped
        return result

    def _replay(self, args: dict[str, Any]) -> ReplaySession:
        sid = str(args.get("session"))
        session = self.replays.get(sid)
        if session is None:
            raise CommandError(f"no replay session {sid!r} (it ended, or was idle for "
                               f"{REPLAY_IDLE_S:.0f} s and dropped); run the replay again")
        session.touched = time.monotonic()
        return session

    async def _flush_replay(self, session: ReplaySession) -> dict[str, Any]:
        billed = existed = 0
        txs, session.submitted = session.submitted, []
        for tx in txs:
            try:
                receipt = await self.app.ledger.submit(tx)
            except KeyConflict as exc:
                self.app.counters.count_packets("ledger", "conflict")
                log.warning("replay: %s", exc)
                continue
            if receipt.existed:
                existed += 1
            else:
                billed += 1
                if tx.call is not None:
                    self.app.record_call(tx.call)
        return {"billed": billed, "already_billed": existed}


def _opt_text(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise CommandError(f"{key}: {value!r} is not text")
    return value


def _opt_int(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise CommandError(f"{key}: {value!r} is not an integer")
    return value


async def start_control(app: App, path: Any) -> ControlServer:
    """Start the control socket with the live command handlers."""
    server = ControlServer(path, Commands(app).handlers())
    await server.start()
    return server
