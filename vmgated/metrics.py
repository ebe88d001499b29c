"""Prometheus metrics of SPEC §9: hot-path counters, a scrape-time collector, GET /metrics.

The pipeline bumps plain integers in `Counters` (no Prometheus object is touched per packet).
`MetricsCollector.collect()` builds every family when scraped, reading the counters and the
providers the daemon wires in (balances projection, active calls, kernel drops, queue depth).
The exposition text (format 0.0.4) is written here rather than by prometheus_client because
the client formats values through float; money series must be the exact decimal rendering of
integer micro-units (`12.345678`), so every value is rendered to text by this module.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from rating.units import format_micros
from vmgated.heap import GcClock

__all__ = [
    "CONTENT_TYPE",
    "DROP_OVERSIZED",
    "DROP_SOURCE",
    "RESULT_OK",
    "BalanceSource",
    "BalanceSummary",
    "Counters",
    "Family",
    "Histogram",
    "MetricsCollector",
    "MetricsServer",
    "MetricsSettings",
    "Sample",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `result` label values of vmgated_packets_total counted by the listeners; the pipeline adds
# its own reasons (e.g. "malformed", "truncated", "auth", "not_sip") next to "ok".
RESULT_OK = "ok"
DROP_SOURCE = "source"
DROP_OVERSIZED = "oversized"

UNKNOWN = "unknown"  # label value for a call the attribution could not place

# Ledger commits are group commits with fsync: sub-millisecond on NVMe, tens of ms on disks.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Counters:
    """Process-lifetime counters, incremented on the hot path; read only at scrape time.

    Keys are label-value tuples in the order of the metric's labels. Incrementing is a dict
    update; nothing here allocates per packet beyond the key tuple.
    """

    __slots__ = (
        "billed_seconds",
        "calls",
        "client_answered",
        "client_attempts",
        "client_billed_seconds",
        "negative_margin",
        "packets",
        "trunk_answered",
        "trunk_attempts",
        "trunk_billed_seconds",
        "unrated",
    )

    def __init__(self) -> None:
        self.packets: Counter[tuple[str, str]] = Counter()  # (input, result)
        self.calls: Counter[tuple[str, str, str]] = Counter()  # (customer, client, disposition)
        self.billed_seconds = 0
        self.unrated: Counter[str] = Counter()  # reason
        self.negative_margin = 0
        self.trunk_attempts: Counter[str] = Counter()
        self.trunk_answered: Counter[str] = Counter()
        self.trunk_billed_seconds: Counter[str] = Counter()
        self.client_attempts: Counter[str] = Counter()
        self.client_answered: Counter[str] = Counter()
        self.client_billed_seconds: Counter[str] = Counter()

    def count_packets(self, input_name: str, result: str, n: int = 1) -> None:
        """Count `n` datagrams of input `hep`/`cdr` with result `ok` or a drop reason."""
        self.packets[(input_name, result)] += n

    def record_call(
        self,
        *,
        customer: str | None,
        client: str | None,
        trunk: str | None,
        disposition: str,
        billsec: int,
        unrated_reason: str | None = None,
        negative_margin: bool = False,
    ) -> None:
        """Count one finished call: calls, billed seconds, ASR/ACD inputs, unrated, margin."""
        customer = customer or UNKNOWN
        client = client or UNKNOWN
        trunk = trunk or UNKNOWN
        self.calls[(customer, client, disposition)] += 1
        self.trunk_attempts[trunk] += 1
        self.client_attempts[client] += 1
        if disposition == "answered":
            self.trunk_answered[trunk] += 1
            self.client_answered[client] += 1
        if billsec:
            self.billed_seconds += billsec
            self.trunk_billed_seconds[trunk] += billsec
            self.client_billed_seconds[client] += billsec
        if unrated_reason is not None:
            self.unrated[unrated_reason] += 1
        if negative_margin:
            self.negative_margin += 1


class Histogram:
    """A cumulative histogram of seconds (Prometheus semantics), observed from the event loop."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: Iterable[float] = COMMIT_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.buckets = [0] * (len(self.bounds) + 1)  # last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one observation (e.g. one ledger commit's duration)."""
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds


class BalanceSummary(NamedTuple):
    """The four summary figures of SPEC §6, in integer micro-units."""

    my_balance: int
    customer_total: int
    owed_to_clients: int
    owed_to_resellers: int


class BalanceSource(Protocol):
    """What the metrics need from the ledger's in-memory balances projection (no queries)."""

    def summary(self, currency: str) -> BalanceSummary:
        """The four summary figures for one currency, micro-units."""
        ...

    def accounts(self, currency: str) -> Iterable[tuple[str, str, int]]:
        """(kind, account id, balance in micro-units) of every customer, client, reseller."""
        ...


# The per-account series are the three parties' accounts; the tenant's is
# vmgated_tenant_balance, and `external` (the outside world's side of payments) is no account
# anyone is billed or paid on.
_PARTY_KINDS = frozenset({"customer", "client", "reseller"})


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Config-derived parts of the exposition, swapped as one reference on reload."""

    currencies: tuple[str, ...] = ("USD",)
    concurrent_ports_limit: int | None = None
    per_account: bool = True
    # (kind, account id, billing_type) rendered as vmgated_account_info, so alert rules can
    # single out prepaid customers; bounded by the config like the balances.
    account_info: tuple[tuple[str, str, str], ...] = ()
    # (kind, account id) of every configured customer, client and reseller: each gets a
    # balance series from the start, 0 until its first posting, so an alert on a prepaid
    # customer's balance also sees a customer who never called or paid.
    accounts: tuple[tuple[str, str], ...] = ()


class Sample(NamedTuple):
    """One exposition line: name suffix (`_bucket`...), label pairs, value already as text."""

    suffix: str
    labels: tuple[tuple[str, str], ...]
    value: str


@dataclass(slots=True)
class Family:
    """One metric family as exposed: name, type, help and its samples."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: str, suffix: str = "", **labels: str) -> None:
        """Append a sample with labels given in order."""
        self.samples.append(Sample(suffix, tuple(labels.items()), value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _float_text(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """Families as Prometheus text exposition format 0.0.4."""
    out: list[str] = []
    for fam in families:
        help_text = fam.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {fam.name} {help_text}\n# TYPE {fam.name} {fam.kind}\n")
        for suffix, labels, value in fam.samples:
            if labels:
                pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{fam.name}{suffix}{{{pairs}}} {value}\n")
            else:
                out.append(f"{fam.name}{suffix} {value}\n")
    return "".join(out)


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process_* collector, also under the unit's `ProcSubset=pid`.

    It reads the boot time from /proc/stat once and, if that fails, exports nothing at all
    for the rest of the process's life. `ProcSubset=pid` leaves only the process directories
    in /proc, so under the shipped unit process_resident_memory_bytes, process_cpu_seconds_total
    and the rest were missing. What it reads per scrape is under /proc/self, which stays; the
    boot time is then the wall clock minus CLOCK_BOOTTIME (the clock /proc/stat's btime and
    a process's start time count from).
    """

    def _boot_time(self) -> float | None:
        try:
            return super()._boot_time()  # type: ignore[no-untyped-call,no-any-return]
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class MetricsCollector:
    """Builds all vmgated families at scrape time from counters and providers.

    Providers are optional callables so the daemon can wire what exists; a provider that
    raises loses its own families for that scrape (logged), never the whole scrape.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        settings: MetricsSettings | None = None,
        balances: BalanceSource | None = None,
        active_calls: Callable[[], Mapping[tuple[str, str], int]] | None = None,
        udp_drops: Callable[[], int] | None = None,
        queue_depth: Callable[[], int] | None = None,
        ledger_commit: Histogram | None = None,
        gc_clock: GcClock | None = None,
        dialog_events: Callable[[], Mapping[str, int]] | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.counters = counters
        self.settings = settings or MetricsSettings()
        self.balances = balances
        self.active_calls = active_calls
        self.udp_drops = udp_drops
        self.queue_depth = queue_depth
        self.ledger_commit = ledger_commit if ledger_commit is not None else Histogram()
        self.gc_clock = gc_clock
        self.dialog_events = dialog_events
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            _ProcessCollector(registry=self._process)

    def collect(self) -> list[Family]:
        """Every vmgated family, built now."""
        families: list[Family] = []
        for part in (self._money, self._calls, self._inputs, self._ledger, self._live):
            try:
                families.extend(part())
            except Exception:
                log.exception("metrics: %s failed; its series are missing from this scrape",
                              part.__name__)
        return families

    def render(self) -> bytes:
        """The full /metrics body (vmgated families, then process_* from prometheus_client)."""
        body = render(self.collect()).encode()
        if self._process is not None:
            body += generate_latest(self._process)
        return body

    def _money(self) -> list[Family]:
        if self.balances is None:
            return []
        settings = self.settings
        summary = [
            Family("vmgated_tenant_balance", "gauge", "My Balance (tenant account), major units."),
            Family("vmgated_customer_total", "gauge",
                   "Customer Total: sum of customer accounts, major units."),
            Family("vmgated_owed_to_clients", "gauge",
                   "Owed to VMGateClients: sum of client accounts, major units."),
            Family("vmgated_owed_to_resellers", "gauge",
                   "Owed to Resellers: sum of reseller accounts, major units."),
        ]
        accounts = Family("vmgated_account_balance", "gauge",
                          "Balance of one customer, client or reseller account, major units.")
        for currency in settings.currencies:
            figures = self.balances.summary(currency)
            for fam, micros in zip(summary, figures, strict=True):
                fam.add(format_micros(micros), currency=currency)
            if settings.per_account:
                held = {(kind, ident): micros
                        for kind, ident, micros in self.balances.accounts(currency)
                        if kind in _PARTY_KINDS}
                # Configured accounts first (0 without postings), then any that still hold
                # money but left the config (a removed customer can still owe).
                for key in settings.accounts:
                    accounts.add(format_micros(held.pop(key, 0)), currency=currency,
                                 kind=key[0], account=key[1])
                for (kind, ident), micros in held.items():
                    accounts.add(format_micros(micros), currency=currency, kind=kind,
                                 account=ident)
        families = summary
        if settings.per_account:
            info = Family("vmgated_account_info", "gauge",
                          "Configured accounts (value 1) with their billing type.")
            for kind, ident, billing_type in settings.account_info:
                info.add("1", kind=kind, account=ident, billing_type=billing_type)
            families += [accounts, info]
        return families

    def _calls(self) -> list[Family]:
        c = self.counters
        calls = Family("vmgated_calls_total", "counter", "Finished calls by disposition.")
        for (customer, client, disposition), n in sorted(c.calls.items()):
            calls.add(str(n), customer=customer, client=client, disposition=disposition)
        billed = Family("vmgated_billed_seconds_total", "counter",
                        "Billable seconds (ceil(answer to end)) of all finished calls.")
        billed.add(str(c.billed_seconds))
        unrated = Family("vmgated_unrated_calls_total", "counter",
                         "Calls recorded unrated (no matching destination, no plan...).")
        for reason, n in sorted(c.unrated.items()):
            unrated.add(str(n), reason=reason)
        negative = Family("vmgated_negative_margin_calls_total", "counter",
                          "Calls whose payouts exceed the customer charge.")
        negative.add(str(c.negative_margin))
        families = [calls, billed, unrated, negative]
        for dim, counts in (
            ("trunk", (c.trunk_attempts, c.trunk_answered, c.trunk_billed_seconds)),
            ("client", (c.client_attempts, c.client_answered, c.client_billed_seconds)),
        ):
            for what, counter, help_text in zip(
                ("attempts", "answered", "billed_seconds"),
                counts,
                ("Call attempts (ASR denominator).", "Answered calls (ASR numerator).",
                 "Billed seconds of answered calls (ACD = this / answered)."),
                strict=True,
            ):
                fam = Family(f"vmgated_{dim}_{what}_total", "counter", f"Per {dim}: {help_text}")
                for key, n in sorted(counter.items()):
                    fam.add(str(n), **{dim: key})
                families.append(fam)
        return families

    def _inputs(self) -> list[Family]:
        packets = Family("vmgated_packets_total", "counter",
                         "Datagrams received, by input and result (ok or the drop reason).")
        for (input_name, result), n in sorted(self.counters.packets.items()):
            packets.add(str(n), input=input_name, result=result)
        families = [packets]
        if self.udp_drops is not None:
            drops = Family("vmgated_udp_receive_errors_total", "counter",
                           "Datagrams the kernel dropped on our listening sockets (buffer full).")
            drops.add(str(self.udp_drops()))
            families.append(drops)
        return families

    def _ledger(self) -> list[Family]:
        h = self.ledger_commit
        fam = Family("vmgated_ledger_commit_seconds", "histogram",
                     "Duration of one ledger group commit (durable write), seconds.")
        cumulative = 0
        for bound, n in zip((*h.bounds, math.inf), h.buckets, strict=True):
            cumulative += n
            fam.add(str(cumulative), "_bucket", le=_float_text(bound))
        fam.add(_float_text(h.total), "_sum")
        fam.add(str(h.count), "_count")
        families = [fam]
        if self.queue_depth is not None:
            depth = Family("vmgated_ledger_queue_depth", "gauge",
                           "Transactions waiting for the ledger writer.")
            depth.add(str(self.queue_depth()))
            families.append(depth)
        return families

    def _live(self) -> list[Family]:
        families = []
        if self.active_calls is not None:
            active = Family("vmgated_active_calls", "gauge",
                            "Calls in progress (INVITE seen, no BYE yet), by trunk and client.")
            for (trunk, client), n in sorted(self.active_calls().items()):
                active.add(str(n), trunk=trunk or UNKNOWN, client=client or UNKNOWN)
            families.append(active)
        limit = self.settings.concurrent_ports_limit
        if limit is not None:
            ports = Family("vmgated_concurrent_ports_limit", "gauge",
                           "Concurrent call ports allowed by the subscription.")
            ports.add(str(limit))
            families.append(ports)
        if self.gc_clock is not None:
            families += self._gc(self.gc_clock)
        if self.dialog_events is not None:
            # What the dialog tracker absorbed (copies, late messages) or could not place
            # (a BYE for no dialog, a call refused because the table was full): the last
            # kinds lose calls, so they must be visible, not only in the tracker's memory.
            events = Family("vmgated_dialog_events_total", "counter",
                            "Dialog tracker events by kind (sip.dialog.TrackerStats).")
            for event, n in sorted(self.dialog_events().items()):
                events.add(str(n), event=event)
            families.append(events)
        return families

    @staticmethod
    def _gc(clock: GcClock) -> list[Family]:
        # A pause here is time nobody reads the UDP socket: kernel drops that coincide with a
        # rising generation-2 figure are the collector, not traffic.
        spent = Family("vmgated_gc_pause_seconds_total", "counter",
                       "Time the event loop spent in CPython cycle collections, by generation.")
        for generation, seconds in enumerate(clock.seconds):
            spent.add(_float_text(seconds), generation=str(generation))
        runs = Family("vmgated_gc_collections_total", "counter",
                      "CPython cycle collections, by generation.")
        for generation, stats in enumerate(gc.get_stats()):
            runs.add(str(stats["collections"]), generation=str(generation))
        longest = Family("vmgated_gc_pause_max_seconds", "gauge",
                         "Longest single cycle collection since the daemon started.")
        longest.add(_float_text(clock.longest))
        frozen = Family("vmgated_gc_frozen_objects", "gauge",
                        "Long-lived objects (config, rate decks) the collector no longer walks.")
        frozen.add(str(gc.get_freeze_count()))
        return [spent, runs, longest, frozen]


class MetricsServer:
    """`GET /metrics` over HTTP/1.x on the main event loop.

    A scrape renders from memory in milliseconds, so it runs on the loop between batches
    instead of in a thread that would contend for the GIL anyway. One request per connection.
    """

    READ_TIMEOUT = 5.0  # a client that does not finish its request head in time is dropped
    WRITE_TIMEOUT = 10.0  # nor one that does not read its answer (each holds a socket)

    def __init__(self, collector: MetricsCollector, host: str, port: int) -> None:
        self.collector = collector
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def sockname(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 resolves here)."""
        assert self._server is not None, "start() first"
        name = self._server.sockets[0].getsockname()
        return (name[0], name[1])

    async def start(self) -> None:
        """Bind and start serving; raises OSError (address in use...) to the caller."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=16384)
        except OSError as exc:
            # asyncio's own text repeats the address; the errno's words are enough.
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"metrics http {self.host}:{self.port}: {why}") from exc

    async def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.READ_TIMEOUT)
            try:
                status, ctype, body = self._respond(head)
            except Exception:
                log.exception("metrics: rendering /metrics failed")
                status, ctype, body = "500 Internal Server Error", "text/plain", b"error\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await asyncio.wait_for(writer.drain(), self.WRITE_TIMEOUT)
        except TimeoutError:
            # Too slow to send its request, or to read the answer: a graceful close would
            # still hold the unsent answer in memory until the client reads it all.
            writer.transport.abort()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET /metrics\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE, self.collector.render()
        if path == b"/":
            return ("200 OK", "text/html",
                    b'<html><body><a href="/metrics">vmgated metrics</a></body></html>\n')
        return "404 Not Found", "text/plain", b"not found; try /metrics\n"
