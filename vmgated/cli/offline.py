"""vmgatectl commands that need only the config and decks, not the daemon.

* `check` — validate the YAML and every deck, as a reload would.
* `rate NUMBER --trunk T [--client C] [--at TIME] [--seconds S]` — what a call would cost the
  Customer, pay the VMGateClient and the reseller, and leave as margin.
* `rates list` and `rates show PLAN [--at TIME]` — the plans and their destination rows.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rating.model import Destination, Leg, RatedCall
from rating.units import EpochUs, UnitError, format_micros, format_time, parse_time
from vmgated.cli.main import CommandError, Commands
from vmgated.cli.output import format_decimal, print_json, render_table
from vmgated.config import Config, ConfigError, load_config

# Status of a deck row at a given time (rates show).
ACTIVE, FUTURE, EXPIRED, SUPERSEDED = "active", "future", "expired", "superseded"


def register(commands: Commands) -> None:
    """Add check, rate and rates list|show."""
    p = commands.add_parser("check", help="validate the config and every rate deck")
    p.set_defaults(func=run_check)

    p = commands.add_parser("rate", help="price one call for all three parties")
    p.add_argument("number", metavar="NUMBER", help="dialled number, as the trunk sends it")
    p.add_argument("--trunk", required=True, metavar="T", help="Customer trunk id")
    p.add_argument("--client", metavar="C", help="VMGateClient id (omit: customer leg only)")
    p.add_argument(
        "--at",
        type=time_arg,
        metavar="TIME",
        help="call start, RFC 3339 or epoch seconds (default: now); picks the valid rate",
    )
    p.add_argument(
        "--seconds",
        type=seconds_arg,
        default=60,
        metavar="S",
        help="answered duration in seconds, fractions allowed, billsec = ceil (default 60)",
    )
    p.set_defaults(func=run_rate)

    rates = commands.group("rates", help="rate plans and their destinations")
    p = rates.add_parser("list", help="every plan: scope, currency, size, assignments")
    p.set_defaults(func=run_rates_list)
    p = rates.add_parser("show", help="one plan's destination rows and their status")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--at", type=time_arg, metavar="TIME", help="status at this time (default now)")
    p.set_defaults(func=run_rates_show)


# -- argument types (argparse turns ArgumentTypeError into a usage error, exit 2) ------------


def time_arg(text: str) -> EpochUs:
    """--at: RFC 3339 (UTC unless an offset is given) or epoch seconds."""
    try:
        return parse_time(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; write 2026-11-22T10:00:00Z or epoch seconds"
        ) from exc


LIMIT_MAX = 1_000_000_000


def limit_arg(text: str) -> int:
    """--limit: a whole number of rows, 0 … LIMIT_MAX (SQLite would take -1 as "no limit"
    and refuse past 64 bits with a traceback)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > 10 or (
        int(value) > LIMIT_MAX
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of rows; write a whole number from 0 to {LIMIT_MAX}"
        )
    return int(value)


def seconds_arg(text: str) -> int:
    """--seconds: answered duration, fractions allowed; returns billsec = ceil(S)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 61 or 60.2")
    return math.ceil(value)


def now_us() -> EpochUs:
    """The wall clock in EpochUs, whole seconds (what a person would type for --at)."""
    return time.time_ns() // 1_000_000_000 * 1_000_000


def load(args: argparse.Namespace) -> Config:
    """The config named by --config, or a refusal listing every problem."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CommandError(
            f"{args.config} cannot be used ({_n(len(exc.problems), 'problem')}):\n{exc}"
        ) from exc


# -- check -----------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    """Load everything a reload would; print OK and a summary, or every problem."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.json:
            problems = [
                {"file": p.file, "line": p.line, "path": p.path, "message": p.message}
                for p in exc.problems
            ]
            print_json({"ok": False, "config": args.config, "problems": problems})
        else:
            for problem in exc.problems:
                print(problem)
            print(f"{_n(len(exc.problems), 'problem')}; {args.config} was not accepted")
        return 1
    summary = summarise(config)
    warnings = [str(w) for w in config.warnings]
    lock = daemon_lock_check(config, args.config)
    ok = not lock.get("problems")
    if args.json:
        print_json({"ok": ok, "config": args.config, "summary": summary, "warnings": warnings,
                    "plan_lock": lock})
        return 0 if ok else 1
    sub = config.subscription
    print(
        f"OK {args.config}: {config.tenant.name} ({config.tenant.currency}); "
        f"{_n(summary['customers'], 'customer')}, {_n(summary['trunks'], 'trunk')}, "
        f"{summary['vmgateclients']}/{sub.client_limit} VMGateClients, "
        f"{summary['networks']}/{sub.limits.networks} networks, "
        f"{_n(summary['resellers'], 'reseller')}, {_n(summary['join_codes'], 'join code')}, "
        f"{_n(summary['rate_plans'], 'rate plan')} "
        f"({_n(summary['destinations'], 'destination')} from {_n(summary['files'], 'file')})"
    )
    for warning in warnings:
        print(f"warning: {warning}")
    if not lock["checked"]:
        print(f"plan lock: not checked ({lock['why']}; a reload checks it)")
    elif ok:
        print("plan lock: OK (asked the running daemon: no row of a plan with history changes)")
    else:
        for problem in lock["problems"]:
            print(problem)
        print(f"plan lock: a reload would be refused ({_n(len(lock['problems']), 'problem')})")
    return 0 if ok else 1


def daemon_lock_check(config: Config, path: str | Path) -> dict[str, Any]:
    """Ask the running daemon whether a reload of `path` passes the plan lock (SPEC §5).

    The lock compares the running plans with the file's and needs the ledger's history, both
    of which live in the daemon; without one answering, the check says it was not made.
    """
    from vmgated.control import ControlError, DaemonNotRunning, call

    try:
        answer = call(config.listen.control, "check_lock",
                      {"config": str(Path(path).resolve())}, timeout=120)
    except DaemonNotRunning:
        return {"checked": False, "why": "vmgated is not running"}
    except (ControlError, TimeoutError, OSError) as exc:
        return {"checked": False, "why": f"the daemon did not answer: {exc}"}
    return dict(answer)


def summarise(config: Config) -> dict[str, Any]:
    """Counts of what a config holds, for `check`."""
    return {
        "tenant": config.tenant.name,
        "currency": config.tenant.currency,
        "customers": len(config.customers),
        "trunks": len(config.trunks),
        "vmgateclients": len(config.vmgateclients),
        "vmgateclient_limit": config.subscription.client_limit,
        "networks": len(config.networks),
        "network_limit": config.subscription.limits.networks,
        "resellers": len(config.resellers),
        "join_codes": len(config.join_codes),
        "rate_plans": len(config.plans),
        "destinations": sum(len(p.destinations) for p in config.plans.values()),
        "files": len(config.source_files),
    }


# -- rate ------------------------------------------------------------------------------------


def run_rate(args: argparse.Namespace) -> int:
    """Rate one call for the three parties and print the legs and the margin."""
    config = load(args)
    if config.trunk(args.trunk) is None:
        raise CommandError(f"unknown trunk {args.trunk!r}; {_known(t.id for t in config.trunks)}")
    if args.client is not None and config.client(args.client) is None:
        known = _known(c.id for c in config.vmgateclients)
        raise CommandError(f"unknown VMGateClient {args.client!r}; {known}")
    limit_s = config.calls.max_duration_us // 1_000_000
    if args.seconds > limit_s:
        raise CommandError(
            f"--seconds {args.seconds} is longer than calls.max_duration ({limit_s} s): "
            "no call is billed that long"
        )
    start = args.at if args.at is not None else now_us()
    rated = config.rater().rate(args.number, args.trunk, args.client, start, args.seconds)
    if args.json:
        print_json(rate_json(rated))
    else:
        print(rate_text(config, rated, args.trunk, args.client))
    return 0


def leg_json(leg: Leg) -> dict[str, Any]:
    """One leg in the SPEC §8 shape (rated, or {"plan", "unrated"})."""
    if not leg.rated:
        return {"plan": leg.plan, "unrated": leg.unrated}
    return {
        "plan": leg.plan,
        "prefix": leg.prefix,
        "description": leg.description,
        "rate_per_min": _decimal(leg.rate_per_min),
        "connection_fee": _decimal(leg.connection_fee),
        "charged_sec": leg.charged_sec,
        "amount": format_micros(leg.amount),
    }


def rate_json(rated: RatedCall) -> dict[str, Any]:
    """A rated call in the SPEC §8 `rate` shape."""
    return {
        "number": rated.number,
        "start": format_time(rated.start),
        "billsec": rated.billsec,
        "legs": {
            "customer": leg_json(rated.customer),
            "vmgateclient": leg_json(rated.vmgateclient),
            "reseller": None if rated.reseller is None else leg_json(rated.reseller),
        },
        "margin": format_micros(rated.margin),
    }


def rate_text(config: Config, rated: RatedCall, trunk: str, client: str | None) -> str:
    """The human view of `rate`: who is involved, one row per leg, then the margin."""
    customer = config.customer_of(trunk)
    who = f"trunk {trunk} (customer {customer.id if customer else '?'})"
    if client is not None:
        reseller = config.reseller_of(client)
        network = config.network_of(client)
        by = f"reseller {reseller.id}" if reseller else "direct"
        who += f" -> client {client} (network {network.id if network else '?'}, {by})"
    head = (
        f"number {rated.number or '-'}  start {format_time(rated.start)}  "
        f"billsec {rated.billsec}  amounts in {config.tenant.currency}\n{who}\n"
    )
    rows: list[list[object]] = []
    for label, leg in (
        ("customer charge", rated.customer),
        ("client payout", rated.vmgateclient),
        ("reseller payout", rated.reseller),
    ):
        if client is None and label != "customer charge":
            rows.append([label, "-", "-", "no --client given", "-", "-", "-", "-", "-"])
        elif leg is None:
            rows.append([label, "-", "-", "direct: no reseller", "-", "-", "-", "-", "-"])
        elif not leg.rated:
            rows.append([label, leg.plan, "-", f"unrated: {leg.unrated}", "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    label,
                    leg.plan,
                    leg.prefix or "(catch-all)",
                    leg.description,
                    leg.rate_per_min,
                    leg.connection_fee,
                    f"{leg.connection_sec}/{leg.billing_block_sec}",
                    leg.charged_sec,
                    format_micros(leg.amount),
                ]
            )
    rows.append(["margin", "", "", "", "", "", "", "", format_micros(rated.margin)])
    table = render_table(
        [
            "LEG",
            "PLAN",
            "PREFIX",
            "DESCRIPTION",
            "RATE/MIN",
            "FEE",
            "CONN/BLOCK",
            "CHARGED S",
            "AMOUNT",
        ],
        rows,
        left=("PREFIX",),
    )
    flags = []
    if rated.negative_margin:
        flags.append("NEGATIVE MARGIN: the payouts exceed the charge")
    if rated.unrated and (client is not None or not rated.customer.rated):
        flags.append("UNRATED: a leg found no price; the call would be recorded as unrated")
    return head + "\n" + table + "".join(f"\n{f}" for f in flags)


# -- rates -----------------------------------------------------------------------------------


def run_rates_list(args: argparse.Namespace) -> int:
    """Every plan with its scope, currency, destination count and assignment count."""
    config = load(args)
    used = config.plan_assignments()
    items = [
        {
            "name": pc.name,
            "scope": pc.scope.value,
            "currency": pc.currency,
            "destinations": len(config.plans[pc.name].destinations),
            "assignments": used.get(pc.name, 0),
            "source": str(pc.deck) if pc.deck is not None else "inline",
        }
        for pc in config.rate_plans
    ]
    if args.json:
        print_json(items)
        return 0
    print(
        render_table(
            ["NAME", "SCOPE", "CURRENCY", "DESTINATIONS", "ASSIGNED", "SOURCE"],
            [list(i.values()) for i in items],
        )
    )
    return 0


def run_rates_show(args: argparse.Namespace) -> int:
    """One plan's rows, ordered by code then valid_since, with their status at --at."""
    config = load(args)
    plan = config.plans.get(args.plan)
    if plan is None:
        raise CommandError(f"unknown rate plan {args.plan!r}; {_known(config.plans)}")
    at = args.at if args.at is not None else now_us()
    rows = sorted(plan.destinations, key=lambda d: (d.code, d.valid_since))
    statuses = row_statuses(rows, at)
    if args.json:
        print_json(
            {
                "plan": plan.name,
                "scope": plan.scope.value,
                "currency": plan.currency,
                "at": format_time(at),
                "destinations": [
                    {
                        "code": d.code,
                        "description": d.description,
                        "rate_per_min": format_decimal(d.rate_per_min),
                        "connection_fee": format_decimal(d.connection_fee),
                        "connection_sec": d.connection_sec,
                        "billing_block_sec": d.billing_block_sec,
                        "valid_since": format_time(d.valid_since),
                        "valid_until": format_time(d.valid_until),
                        "status": statuses[i],
                    }
                    for i, d in enumerate(rows)
                ],
            }
        )
        return 0
    print(
        f"{plan.name}: {plan.scope.value} plan, {plan.currency}, {len(rows)} destinations; "
        f"status at {format_time(at)}"
    )
    table = [
        [
            d.code or "(catch-all)",
            d.description,
            d.rate_per_min,
            d.connection_fee,
            d.connection_sec,
            d.billing_block_sec,
            format_time(d.valid_since),
            format_time(d.valid_until),
            statuses[i],
        ]
        for i, d in enumerate(rows)
    ]
    print(
        render_table(
            [
                "PREFIX",
                "DESCRIPTION",
                "RATE/MIN",
                "FEE",
                "CONN S",
                "BLOCK S",
                "VALID FROM",
                "VALID TO",
                "STATUS",
            ],
            table,
            left=("PREFIX",),
        )
    )
    return 0


def row_statuses(rows: list[Destination], at: EpochUs) -> list[str]:
    """`future`, `expired`, `active`, or `superseded` (in its window, but a row of the same
    code with a later valid_since is also in its window and wins, SPEC §5)."""
    winner: dict[str, EpochUs] = {}
    for d in rows:
        if _in_window(d, at) and d.valid_since >= winner.get(d.code, d.valid_since):
            winner[d.code] = d.valid_since
    out = []
    for d in rows:
        if d.valid_since > at:
            out.append(FUTURE)
        elif d.valid_until is not None and d.valid_until <= at:
            out.append(EXPIRED)
        elif winner.get(d.code) != d.valid_since:
            out.append(SUPERSEDED)
        else:
            out.append(ACTIVE)
    return out


def _in_window(d: Destination, at: EpochUs) -> bool:
    return d.valid_since <= at and (d.valid_until is None or at < d.valid_until)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _decimal(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def _known(names: Mapping[str, Any] | Any) -> str:
    listed = sorted(names)
    if not listed:
        return "none is configured"
    more = f", … ({len(listed)} in all)" if len(listed) > 10 else ""
    return "known: " + ", ".join(listed[:10]) + more
