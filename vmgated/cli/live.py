"""vmgatectl commands that need the running daemon or the ledger file.

Writes and live state go through the control socket (`status`, `reload`, `calls --active`,
`pay`, `payout`, `resellers`, `clients`, `rerate`, `cdr import`, `replay`, `rates import`);
history reports read the ledger read-only (`calls`, `balances`, `payments`, `ledger verify`,
`ledger head`), so a clerk can still read the books while the daemon is stopped.
"""

from __future__ import annotations

import argparse
import base64
import json
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from ledger import reports
from ledger.model import CallEntry
from ledger.verify import verify
from rating.deck import DeckError, parse_deck
from rating.model import Party
from rating.units import format_micros, format_time
from sip.capture import CaptureError, read_capture
from vmgated.cli.main import CommandError, Commands
from vmgated.cli.offline import leg_json, limit_arg, load, time_arg
from vmgated.cli.output import print_json, render_table
from vmgated.configparse import unreadable
from vmgated.control import REQUEST_LIMIT, ControlError, DaemonNotRunning, call
from vmgated.planlock import lock_problems
from vmgated.statedir import group_name

T = TypeVar("T")
CHUNK = 2000  # datagrams or CDR lines per control request, at most
CHUNK_BYTES = REQUEST_LIMIT // 2  # and at most this much JSON: the daemon refuses a longer line


def _chunks(items: Iterable[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """`items` in lists of at most CHUNK items and about CHUNK_BYTES of request.

    A count alone was not enough: 2,000 datagrams of a real capture make a 2.2 MB request,
    which the daemon refuses (REQUEST_LIMIT) — and that failure used to pass for success.
    """
    chunk: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if chunk and (used + n > CHUNK_BYTES or len(chunk) >= CHUNK):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += n
    if chunk:
        yield chunk


def register(commands: Commands) -> None:
    """Add the live and report commands."""
    p = commands.add_parser("status", help="daemon state: listeners, active calls, ledger head")
    p.set_defaults(func=run_status)
    p = commands.add_parser("reload", help="reload config and decks (like SIGHUP)")
    p.set_defaults(func=run_reload)
    p = commands.add_parser("calls", help="call history (or --active calls in progress)")
    p.add_argument("--active", action="store_true", help="calls in progress (from the daemon)")
    p.add_argument("--unrated", action="store_true", help="only calls with an unrated leg")
    p.add_argument("--customer")
    p.add_argument("--trunk")
    p.add_argument("--client")
    p.add_argument("--reseller")
    p.add_argument("--since", type=time_arg, help="RFC 3339 or epoch seconds")
    p.add_argument("--until", type=time_arg)
    p.add_argument("--limit", type=limit_arg, default=None,
                   help="at most N calls (default: 100 of the history; every call in progress)")
    p.set_defaults(func=run_calls)
    p = commands.add_parser("balances", help="My Balance, Customer Total, owed amounts")
    p.set_defaults(func=run_balances)
    p = commands.add_parser("pay", help="record a Customer payment IN")
    p.add_argument("customer")
    p.add_argument("amount")
    p.add_argument("--ref", required=True, help="payment reference (makes it idempotent)")
    p.set_defaults(func=run_pay)
    p = commands.add_parser("payout", help="record a VMGateClient or reseller payout OUT")
    p.add_argument("kind", choices=("client", "reseller"))
    p.add_argument("id")
    p.add_argument("amount")
    p.add_argument("--ref", required=True, help="payout reference (makes it idempotent)")
    p.set_defaults(func=run_payout)
    p = commands.add_parser("payments", help="recent payments and payouts")
    p.add_argument("--limit", type=limit_arg, default=50)
    p.set_defaults(func=run_payments)
    p = commands.add_parser("resellers", help="the reseller roster")
    p.set_defaults(func=run_resellers)
    p = commands.add_parser("clients", help="the VMGateClient roster")
    p.set_defaults(func=run_clients)
    p = commands.add_parser("rerate", help="rate unrated calls again with the running plans")
    p.set_defaults(func=run_rerate)
    p = commands.add_parser("replay", help="bill a pcap/pcapng or HEP capture file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run_replay)
    cdr = commands.group("cdr", help="CDR lines")
    p = cdr.add_parser("import", help="bill a file of JSON CDR lines (one per line)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run_cdr_import)
    rates = commands.group("rates", help="rate plans and their destinations")
    p = rates.add_parser("import", help="replace a plan's deck with a CSV (validated, "
                                        "plan lock checked) and reload the daemon")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--plan", required=True, metavar="P", help="the plan whose deck to replace")
    p.set_defaults(func=run_rates_import)
    led = commands.group("ledger", help="ledger integrity")
    p = led.add_parser("verify", help="recompute the hash chain, zero-sums and balances")
    p.add_argument("--state-dir", type=Path, help="default: state_dir of the config")
    p.set_defaults(func=run_verify)
    p = led.add_parser("head", help="the chain head (seq, hash) to record off the machine")
    p.add_argument("--state-dir", type=Path)
    p.set_defaults(func=run_head)


# -- plumbing ---------------------------------------------------------------------------------
def _ctl(where: Where, cmd: str, args: dict[str, Any] | None = None,
         on_progress: Callable[[int, int], None] | None = None) -> Any:
    try:
        return call(where.control, cmd, args or {}, on_progress=on_progress, timeout=120)
    except DaemonNotRunning as exc:
        raise CommandError(f"{exc}; start it with `systemctl start vmgated` or "
                           f"`vmgated --config {where.path}`") from exc
    except ControlError as exc:
        raise CommandError(str(exc)) from exc
    except TimeoutError as exc:
        # Connected but silent: overloaded or stuck. A line, not a traceback.
        raise CommandError(f"{exc}; see its log (`journalctl -u vmgated`)") from exc


class Where(NamedTuple):
    """What the live commands need from the config: where the daemon and the ledger are."""

    path: Path
    control: Path
    state_dir: Path
    currency: str


def locate(args: argparse.Namespace) -> Where:
    """The control socket, state dir and currency of the config named by --config.

    The operator edits the config or a deck and then runs `vmgatectl reload`, `status`,
    `calls`...; if the edit broke the file, the running daemon and the ledger are still there
    (the daemon keeps its running config and refuses the reload with file:line: field). So
    when validation fails, the few keys needed here are read leniently and the problems are
    only mentioned; `vmgatectl check` lists them.
    """
    try:
        config = load(args)
    except CommandError as refusal:
        where = _raw_where(Path(args.config))
        if where is None:
            raise
        first = refusal.message.splitlines()[0]
        print(f"vmgatectl: warning: {first.rstrip(':')}; run `vmgatectl check` "
              "(the daemon keeps its running config)", file=sys.stderr)
        return where
    return Where(config.path, Path(config.listen.control), config.state_dir,
                 config.tenant.currency)


def _raw_where(config_path: Path) -> Where | None:
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("state_dir", "."), str):
        return None
    base = config_path.parent
    state_dir = base / data.get("state_dir", ".")
    listen = data.get("listen")
    control = listen.get("control") if isinstance(listen, dict) else None
    tenant = data.get("tenant")
    currency = tenant.get("currency") if isinstance(tenant, dict) else None
    return Where(
        config_path,
        base / control if isinstance(control, str) and control else state_dir / "control.sock",
        state_dir,
        currency if isinstance(currency, str) and currency else "USD",
    )


def _ledger_path(where: Where, state_dir: Path | None = None) -> Path:
    path = (state_dir or where.state_dir) / "ledger.db"
    if not _ledger_exists(path):
        raise CommandError(f"no ledger at {path} (has vmgated run with this state_dir?)")
    return path


def _ledger_exists(path: Path) -> bool:
    try:
        return path.exists()
    except PermissionError:  # the state dir is 0750: not this user's, not its group's
        raise CommandError(f"permission denied on {path.parent}: run as root or as a member "
                           "of the vmgated group") from None


class Progress:
    """A one-line progress bar on a terminal's stderr; silent when not a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.tty or total <= 0:
            return
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _emit(args: argparse.Namespace, data: Any, headers: list[str],
          rows: list[list[object]]) -> int:
    if args.json:
        print_json(data)
    else:
        print(render_table(headers, rows, left=("id", "prefix", "client", "trunk", "customer")))
    return 0


# -- status / reload ----------------------------------------------------------------------------
def run_status(args: argparse.Namespace) -> int:
    """Print the daemon's status."""
    status = _ctl(locate(args), "status")
    if args.json:
        print_json(status)
        return 0
    for key, value in status.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "; ".join(str(v) for v in value) or "-"
        print(f"{key:16} {value}")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    """Ask the daemon to reload; a refusal prints file:line: field: why."""
    answer = _ctl(locate(args), "reload")
    print_json(answer) if args.json else print(_reload_text(answer))
    return 0


def _reload_text(answer: Any) -> str:
    """The daemon's reload answer for people: `reloaded`, then what waits for a restart."""
    pending = answer["restart_needed"]
    if not pending:
        return str(answer["result"])
    return f"{answer['result']}; these take effect at the next restart:\n" + "\n".join(pending)


# -- calls -------------------------------------------------------------------------------------
def call_json(entry: CallEntry) -> dict[str, Any]:
    """One call in the SPEC §8 `calls` shape."""
    legs: dict[str, Any] = {"customer": None, "vmgateclient": None, "reseller": None}
    for leg in entry.legs:
        legs[leg.party.value] = leg_json(leg)
    return {
        "call_uid": entry.call_uid, "call_id": entry.call_id, "trunk": entry.trunk,
        "customer": entry.customer, "client": entry.client, "network": entry.network,
        "reseller": entry.reseller, "caller": entry.caller, "callee": entry.callee,
        "number": entry.number, "start": format_time(entry.start),
        "answer": format_time(entry.answer), "end": format_time(entry.end),
        "billsec": entry.billsec, "sip_code": entry.sip_code,
        "disposition": entry.disposition, "legs": legs, "margin": format_micros(entry.margin),
        "flags": list(entry.flags),
    }


def _leg_amount(entry: CallEntry, party: Party) -> str:
    for leg in entry.legs:
        if leg.party == party:
            return format_micros(leg.amount) if leg.rated else f"unrated:{leg.unrated}"
    return "-"


def run_calls(args: argparse.Namespace) -> int:
    """Call history from the ledger, or calls in progress from the daemon."""
    config = locate(args)
    if args.active:
        if args.unrated:
            raise CommandError("--unrated selects rated calls from the history; calls in "
                               "progress are not rated until they end")
        active = _ctl(config, "calls_active", {
            "customer": args.customer, "trunk": args.trunk, "client": args.client,
            "reseller": args.reseller, "since": args.since, "until": args.until,
            "limit": args.limit,
        })
        rows = [[c["start"], c["answer"], c["trunk"], c["client"], c["reseller"], c["caller"],
                 c["callee"]] for c in active]
        return _emit(args, active,
                     ["start", "answer", "trunk", "client", "reseller", "caller", "callee"], rows)
    entries = reports.calls(
        _ledger_path(config), customer=args.customer, trunk=args.trunk, client=args.client,
        reseller=args.reseller, since=args.since, until=args.until, unrated=args.unrated,
        limit=100 if args.limit is None else args.limit,
    )
    data = [call_json(e) for e in entries]
    rows = [[format_time(e.start), e.trunk, e.client, e.reseller, e.callee, e.billsec,
             e.disposition, _leg_amount(e, Party.CUSTOMER), _leg_amount(e, Party.VMGATECLIENT),
             _leg_amount(e, Party.RESELLER), format_micros(e.margin), ",".join(e.flags)]
            for e in entries]
    return _emit(args, data, ["start", "trunk", "client", "reseller", "callee", "billsec",
                              "disposition", "charge", "client_payout", "reseller_payout",
                              "margin", "flags"], rows)


# -- money -------------------------------------------------------------------------------------
def run_balances(args: argparse.Namespace) -> int:
    """The four summary figures and every account (from the ledger file)."""
    config = locate(args)
    currency = config.currency
    summary, accounts = reports.balances(_ledger_path(config), currency)
    data: dict[str, Any] = {
        "currency": currency,
        "my_balance": format_micros(summary.my_balance),
        "customer_total": format_micros(summary.customer_total),
        "owed_to_vmgateclients": format_micros(summary.owed_to_vmgateclients),
        "owed_to_resellers": format_micros(summary.owed_to_resellers),
        "accounts": [{"kind": k, "id": i, "balance": format_micros(b)} for k, i, b in accounts],
    }
    if args.json:
        print_json(data)
        return 0
    print(render_table(["figure", currency], [
        ["My Balance", data["my_balance"]], ["Customer Total", data["customer_total"]],
        ["Owed to VMGateClients", data["owed_to_vmgateclients"]],
        ["Owed to Resellers", data["owed_to_resellers"]]]))
    print()
    print(render_table(["kind", "id", "balance"],
                       [[a["kind"], a["id"], a["balance"]] for a in data["accounts"]],
                       left=("id",)))
    return 0


def _receipt(args: argparse.Namespace, what: str, result: dict[str, Any]) -> int:
    if args.json:
        print_json(result)
    elif result.get("existed"):
        print(f"{what}: already recorded as {result['key']} (seq {result['seq']}); nothing added")
    else:
        print(f"{what}: recorded as {result['key']} (seq {result['seq']})")
    return 0


def run_pay(args: argparse.Namespace) -> int:
    """Customer payment IN; returns once it is durable in the ledger."""
    result = _ctl(locate(args), "pay",
                  {"customer": args.customer, "amount": args.amount, "ref": args.ref})
    return _receipt(args, f"payment from {args.customer}", result)


def run_payout(args: argparse.Namespace) -> int:
    """VMGateClient / reseller payout OUT; returns once durable."""
    result = _ctl(locate(args), "payout", {"kind": args.kind, "id": args.id,
                                         "amount": args.amount, "ref": args.ref})
    return _receipt(args, f"payout to {args.kind} {args.id}", result)


def run_payments(args: argparse.Namespace) -> int:
    """Recent payments: date, direction, target type, target, amount, reference."""
    config = locate(args)
    items = reports.payments(_ledger_path(config), limit=args.limit)
    data = [{"date": format_time(p.date), "direction": p.direction,
             "target_type": p.target_type, "target": p.target,
             "amount": format_micros(p.amount), "reference": p.reference} for p in items]
    rows: list[list[object]] = [
        [d["date"], d["direction"], d["target_type"], d["target"], d["amount"], d["reference"]]
        for d in data
    ]
    return _emit(args, data, ["date", "direction", "target_type", "target", "amount",
                              "reference"], rows)


# -- rosters -----------------------------------------------------------------------------------
def run_resellers(args: argparse.Namespace) -> int:
    """Name, company, email, client count, online count, balance, billing type, status."""
    data = _ctl(locate(args), "resellers")
    rows = [[r["id"], r["name"], r["company"], r["email"], r["clients"], r["online"],
             r["balance"], r["billing_type"], r["status"]] for r in data]
    return _emit(args, data, ["id", "name", "company", "email", "clients", "online", "balance",
                              "billing_type", "status"], rows)


def run_clients(args: argparse.Namespace) -> int:
    """VMGateClients: network, reseller (or direct), plan, online, balance."""
    data = _ctl(locate(args), "clients")
    rows = [[c["id"], c["name"], c["network"], c["reseller"], c["join_code"], c["rate_plan"],
             c["online"], c["balance"]] for c in data]
    return _emit(args, data, ["id", "name", "network", "reseller", "join_code", "rate_plan",
                              "online", "balance"], rows)


# -- long operations ----------------------------------------------------------------------------
def run_rerate(args: argparse.Namespace) -> int:
    """Rate unrated calls again (reversal + new transaction for each that now rates)."""
    bar = Progress("rerate")
    try:
        result = _ctl(locate(args), "rerate", on_progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json(result)
    else:
        print(f"examined {result['examined']}, rerated {result['rerated']}, "
              f"still unrated {result['still_unrated']}")
    return 0


def run_cdr_import(args: argparse.Namespace) -> int:
    """Send a CDR file to the daemon in chunks; per-line errors are reported, not fatal."""
    config = locate(args)
    try:
        raw_lines = args.file.read_bytes().splitlines()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror}") from exc
    # Each line decoded on its own, strictly, as the UDP listener reads a datagram: a line in
    # another encoding is that line's error (it used to be billed with U+FFFD in its text).
    lines: list[str] = []
    local_errors: list[str] = []
    for n, raw in enumerate(raw_lines, 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append("")  # keeps the daemon's line numbers true; blank lines are skipped
            local_errors.append(f"{args.file}:{n}: not UTF-8 text (byte {raw[exc.start]:#04x} "
                                f"at column {exc.start + 1}); CDR lines are UTF-8 JSON")
    bar = Progress("cdr import")
    totals: dict[str, Any] = {"billed": 0, "already_billed": 0, "errors": local_errors}
    first = 0
    try:
        for chunk in _chunks(lines, lambda line: len(json.dumps(line)) + 1):
            result = _ctl(config, "cdr_import", {"lines": chunk, "first_line": first + 1})
            totals["billed"] += result["billed"]
            totals["already_billed"] += result["already_billed"]
            totals["errors"] += [f"{args.file}:{e}" for e in result["errors"]]
            first += len(chunk)
            bar(first, len(lines))
    finally:
        bar.close()
    if args.json:
        print_json(totals)
    else:
        print(f"billed {totals['billed']}, already billed {totals['already_billed']}, "
              f"errors {len(totals['errors'])}")
        for err in totals["errors"]:
            print(err, file=sys.stderr)
    return 1 if totals["errors"] else 0


def _map(path: Path) -> bytes | mmap.mmap:
    """The file mapped read-only (page cache, not heap), or its bytes when it cannot be
    mapped (empty, a pipe)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            return f.read()


def _capture_items(data: bytes | mmap.mmap) -> Iterator[dict[str, Any]]:
    for d in read_capture(data):
        item: dict[str, Any] = {"data": base64.b64encode(d.payload).decode(), "ts": d.ts_us}
        if d.is_hep:
            item["hep"] = True
        else:
            item["src"], item["dst"] = list(d.src), list(d.dst)
        yield item


def run_replay(args: argparse.Namespace) -> int:
    """Replay a capture through the daemon's pipeline (its own tracker, same ledger)."""
    config = locate(args)
    try:
        data = _map(args.file)
        # A first pass counts (for the bar) and finds a damaged file before anything is billed.
        total = sum(1 for _ in read_capture(data))
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror}") from exc
    except CaptureError as exc:
        raise CommandError(f"{args.file}: {exc}") from exc
    session = _ctl(config, "replay_begin")["session"]
    bar = Progress("replay")
    billed = existed = sent = 0
    items = _capture_items(data)  # one chunk at a time: a capture of gigabytes stays on disk
    try:
        for chunk in _chunks(items, lambda item: len(item["data"]) + 100):
            result = _ctl(config, "replay_chunk", {"session": session, "items": chunk})
            billed += result["billed"]
            existed += result["already_billed"]
            sent += len(chunk)
            bar(sent, total)
        result = _ctl(config, "replay_end", {"session": session})
    finally:
        bar.close()
    dropped: dict[str, int] = result.get("dropped", {})
    out = {"datagrams": sent, "billed": billed + result["billed"],
           "already_billed": existed + result["already_billed"], "dropped": dropped}
    if args.json:
        print_json(out)
    else:
        print(f"replayed {out['datagrams']} datagrams: billed {out['billed']} calls, "
              f"{out['already_billed']} already billed")
        if dropped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.items())
            print(f"dropped {sum(dropped.values())} datagrams that are not billable SIP "
                  f"({reasons})", file=sys.stderr)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Recompute the chain, zero-sums and balances; exit 1 on the first bad seq."""
    config = locate(args) if args.state_dir is None else None
    path = _ledger_path(config, args.state_dir) if config else args.state_dir / "ledger.db"
    bar = Progress("verify")
    try:
        report = verify(path, progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json({"ok": report.ok, "transactions": report.transactions,
                    "postings": report.postings, "checkpoints": report.checkpoints,
                    "head_seq": report.head_seq, "head_hash": report.head_hash,
                    "first_bad_seq": report.first_bad_seq, "problem": report.problem})
    else:
        print(report)
    return 0 if report.ok else 1


def run_head(args: argparse.Namespace) -> int:
    """The chain head, to write down outside the machine."""
    config = locate(args) if args.state_dir is None else None
    path = _ledger_path(config, args.state_dir) if config else args.state_dir / "ledger.db"
    seq, digest = reports.head(path)
    print_json({"seq": seq, "hash": digest}) if args.json else print(f"{seq} {digest}")
    return 0


# -- rates import --------------------------------------------------------------------------------
def _used_rates(ledger: Path) -> frozenset[tuple[str, str, int]]:
    """Deck rows that priced a call in history, read from the ledger file (read-only)."""
    if not _ledger_exists(ledger):
        return frozenset()
    with reports.snapshot(ledger) as conn:
        rows = conn.execute("SELECT plan, prefix, valid_since FROM used_rates").fetchall()
    return frozenset((str(p), str(c), int(v)) for p, c, v in rows)


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file in the same directory, fsync, rename).

    The new file gets the old one's group and permission bits before it takes its place: a
    clerk's umask (0077) and primary group would otherwise leave a deck only the clerk can
    read, and the daemon — its own user, reading the deck through the group — would refuse
    the reload and then fail to start at all. If the group cannot be kept (the clerk is not
    in it), nothing is replaced.
    """
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if old is not None:
                _keep_access(f.fileno(), old, path)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CommandError(f"{path} was not replaced: {unreadable(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_access(fd: int, old: os.stat_result, path: Path) -> None:
    """Give the open new file `fd` the group and permission bits `old` had."""
    if os.fstat(fd).st_gid != old.st_gid:
        try:
            os.fchown(fd, -1, old.st_gid)
        except PermissionError as exc:
            if not old.st_mode & stat.S_IROTH:  # else anyone, the daemon too, reads it
                raise CommandError(
                    f"{path} was not replaced: it belongs to group {group_name(old.st_gid)}, "
                    "which this user is not in, so the new deck could not keep it and the "
                    "daemon might not be able to read it; run the import as a member of that "
                    "group"
                ) from exc
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def run_rates_import(args: argparse.Namespace) -> int:
    """Validate a deck CSV for plan P, check the plan lock, replace the deck, reload."""
    config = load(args)
    declared = next((p for p in config.rate_plans if p.name == args.plan), None)
    if declared is None:
        raise CommandError(f"--plan {args.plan!r} is not a rate plan of {config.path}; known: "
                           f"{', '.join(p.name for p in config.rate_plans) or '(none)'}")
    if declared.deck is None:
        raise CommandError(f"plan {args.plan!r} has inline destinations in {config.path}; "
                           "give it a `deck:` file to import into")
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{args.file}: {unreadable(exc)}") from exc
    try:
        destinations = parse_deck(text, str(args.file))
    except DeckError as exc:
        raise CommandError(f"{args.file} was not imported:\n{exc}") from exc
    old = config.plans[args.plan]
    new = replace(old, destinations=destinations)
    used = _used_rates(config.state_dir / "ledger.db")
    problems = lock_problems({old.name: old}, {new.name: new}, used,
                             {old.name: str(args.file)})
    if problems:
        raise CommandError(f"{args.file} was not imported (plan lock: a plan with call history "
                           "keeps its rows):\n" + "\n".join(problems))
    _replace_file(declared.deck, text)
    try:
        reload = _reload_text(_ctl(locate(args), "reload"))
    except CommandError as exc:
        if "not running" not in exc.message:
            raise CommandError(f"{declared.deck} replaced ({len(destinations)} rows), but the "
                               f"daemon refused the reload:\n{exc.message}") from exc
        reload = "daemon not running; used at its next start"
    result = {"plan": args.plan, "deck": str(declared.deck), "rows": len(destinations),
              "reload": reload}
    if args.json:
        print_json(result)
    else:
        print(f"plan {args.plan}: {len(destinations)} rows written to {declared.deck}; {reload}")
    return 0
