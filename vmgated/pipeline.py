"""The per-packet path: datagrams → HEP → SIP → tracker → attribution → rater → transaction.

Synchronous and socket-free: listeners hand it batches, it hands finished, rated calls to a
`sink` (the ledger writer side, owned by `vmgated.app`). Everything that may change on reload
(config, rater, attributor) sits in one immutable `Runtime` swapped by a single assignment, so
a packet is always rated against one consistent config.

Drops are counted by (input, reason) and never raise: a malformed datagram must not cost us
another call. They are logged at most once per `LOG_EVERY` seconds (the first at once), with
the counts since the last line, so a flood of garbage cannot flood the journal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ledger.model import CallEntry, Transaction
from ledger.transactions import call_tx
from rating.model import Leg, Party, RatedCall
from rating.rater import Rater
from sip import message
from sip.call import Addr, CallRecord
from sip.dialog import Tracker
from sip.message import SipMessage
from vmgated.attribution import Attribution, Attributor
from vmgated.cdr import CdrError, parse_line
from vmgated.config import Config
from vmgated.hepparse import INTERNAL_ERROR, Notice, Skewed, parse_batch
from vmgated.logpace import LogPace
from vmgated.metrics import Counters

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one loaded config; replaced whole on reload."""

    config: Config
    rater: Rater
    attributor: Attributor

    @classmethod
    def build(cls, config: Config) -> Runtime:
        """Build the rater (prefix indexes) and attributor for a config, off to the side."""
        return cls(config=config, rater=config.rater(), attributor=Attributor(config))


@dataclass(frozen=True, slots=True)
class Billable:
    """A finished call waiting for its durable commit (kept in snapshots until acked)."""

    uid: str
    record: CallRecord
    trunk: str | None = None  # given by a CDR line; otherwise attribution decides
    client: str | None = None


class Pipeline:
    """Turns input datagrams into rated call transactions for one tracker."""

    def __init__(
        self,
        runtime: Runtime,
        tracker: Tracker,
        counters: Counters,
        sink: Callable[[Billable, Transaction], None],
        clock_us: Callable[[], int],
        capture_clocked: bool = False,
    ) -> None:
        """`clock_us` is what `expire` runs on; `capture_clocked` says it is itself capture
        time (a `vmgatectl replay` session), so there is no receive time to keep per call."""
        self.runtime = runtime
        self.capture_clocked = capture_clocked
        self.tracker = tracker
        self.counters = counters
        self.sink = sink
        self.clock_us = clock_us
        self._unlogged: dict[tuple[str, str], int] = {}
        self._drop_log = LogPace()
        self._failure_log = LogPace()
        self._skew_log = LogPace()

    # -- input -------------------------------------------------------------------------
    def feed_hep(self, batch: list[tuple[bytes, Addr]], replaying: bool = False) -> None:
        """Process a batch of HEP datagrams (already filtered by the source allow-list).

        `replaying`: the batch comes from the journal at a restart. Its receive time is then
        the restart's, later than the real one by the downtime, which only makes its calls'
        timeouts run late (never early); the clock warning is not given for it.
        """
        # One receive time per batch (it arrived within one loop tick): each call keeps the
        # offset from its capture agent's clock and is expired on that clock (sip.dialog).
        received = None if self.capture_clocked else self.clock_us()
        ours = 0 if received is None or replaying else received  # 0: no clock check
        parsed, notices = parse_batch(batch, self.runtime.config.security.hep_auth_key, ours)
        if notices:
            self.notice(notices)
        self.feed_parsed(parsed, received)

    def feed_parsed(
        self, parsed: Iterable[tuple[Any, int, Addr, Addr, int | None, str | None]],
        received: int | None,
        wire: bool = False,
    ) -> None:
        """Feed parsed messages (`vmgated.hepparse`) to the tracker and bill what they end.

        `received`: when they reached us, on `clock_us` (None when that clock is capture
        time). `wire`: each message is the plain tuple of its fields, as the ingest process
        sends it (`vmgated.ingest`). Each message that hits a bug costs only itself (SPEC
        §3.3).
        """
        feed = self.tracker.feed
        new = tuple.__new__
        ok = 0  # counted once per batch: a tuple-keyed dict update per packet costs ~0.1 µs
        try:
            for msg, ts_us, src, dst, capture_id, correlation_id in parsed:
                ok += 1
                if wire:  # no field checks: our own process built it
                    msg = new(SipMessage, msg)
                try:
                    records = feed(msg, ts_us, src, dst, capture_id, correlation_id, received)
                    if records:
                        for record in records:
                            try:
                                self.bill(Billable("", record))
                            except Exception as exc:
                                self.failed("hep", exc, src)  # its other record goes on
                except Exception as exc:
                    self.failed("hep", exc, src)
        finally:
            self.counters.packets[("hep", "ok")] += ok

    def notice(self, notices: Iterable[Notice]) -> None:
        """Count and log what `parse_batch` said about the datagrams it did not pass on."""
        for item in notices:
            if isinstance(item, Skewed):
                self._skewed(*item)
            elif item.reason == INTERNAL_ERROR:
                self.failed("hep", item.detail, item.sender)
            else:
                self.dropped("hep", item.reason, item.detail, item.sender)

    def feed_cdr(self, batch: Iterable[tuple[bytes, Addr]]) -> None:
        """Process a batch of CDR datagrams (one JSON object each, or several lines)."""
        for data, sender in batch:
            for line in data.splitlines():
                if not line.strip():
                    continue
                try:
                    try:
                        cdr = parse_line(line, sender, self.tracker.max_duration_us)
                    except CdrError as exc:
                        self.dropped("cdr", exc.reason, exc, sender)
                        continue
                    self.counters.count_packets("cdr", "ok")
                    self.bill(Billable(cdr.uid, cdr.record, cdr.trunk, cdr.client))
                except Exception as exc:
                    self.failed("cdr", exc, sender)

    def feed_sip(self, data: bytes, ts_us: int, src: Addr, dst: Addr) -> None:
        """Process one raw SIP payload captured without HEP (pcap replay)."""
        try:
            msg = message.parse(data)
        except message.SipError as exc:
            self.dropped("sip", "sip_" + exc.reason, exc, src)
            return
        self.counters.count_packets("sip", "ok")
        for record in self.tracker.feed(msg, ts_us, src, dst, None, None):
            self.bill(Billable("", record))

    def _skewed(self, skew_us: int, sender: Addr, capture_id: int | None) -> None:
        """Say (at most every LOG_EVERY seconds) that a capture agent's clock is off.

        Billing is right either way (call times are the agent's, timeouts run on each call's
        own clock), but an operator wants to know: CDR times are off by as much.
        """
        if not self._skew_log.due():
            return
        side = "behind" if skew_us > 0 else "ahead of"
        log.warning("capture agent %s:%s (capture id %s): its clock is %.0f s %s ours; call "
                    "times are its clock's, so its CDR times are off by as much (billing is "
                    "not: durations and timeouts run on each call's own clock)",
                    sender[0], sender[1], capture_id, abs(skew_us) / 1e6, side)

    def dropped(self, input_name: str, reason: str, detail: object, sender: Addr) -> None:
        """Count a dropped datagram; log a summary at most every LOG_EVERY seconds."""
        self.counters.packets[(input_name, reason)] += 1
        key = (input_name, reason)
        self._unlogged[key] = self._unlogged.get(key, 0) + 1
        if not self._drop_log.due():
            return
        counts = ", ".join(f"{n} {i} {r}" for (i, r), n in sorted(self._unlogged.items()))
        self._unlogged.clear()
        log.warning("dropped %s (last: %s from %s:%s); counted in vmgated_packets_total",
                    counts, detail, sender[0], sender[1])

    def failed(self, input_name: str, exc: Exception | str, sender: Addr | None) -> None:
        """A datagram (or, with `sender` None, a call closed by `expire`) that hit a bug, not
        a refusal the parsers know: count it, log the traceback (`exc`, or its text when it
        was met in the ingest process) at most every LOG_EVERY seconds, and go on with the
        rest of the batch.

        SPEC §3.3: bad input never stops the daemon or costs another call. The journal still
        holds the datagram, so a fixed build bills it at its next restart.
        """
        self.counters.packets[(input_name, INTERNAL_ERROR)] += 1
        if self._failure_log.due():
            what = "a call closed by expiry" if sender is None else (
                f"a {input_name} datagram from {sender[0]}:{sender[1]}")
            if isinstance(exc, str):
                log.error("%s failed in the pipeline (counted as %s; the batch goes on):\n%s",
                          what, INTERNAL_ERROR, exc.rstrip())
            else:
                log.error("%s failed in the pipeline (counted as %s; the batch goes on)", what,
                          INTERNAL_ERROR, exc_info=exc)

    def expire(self, now_us: int | None = None) -> int:
        """Close overdue dialogs (max_duration, session expiry, no final response)."""
        records = self.tracker.expire(self.clock_us() if now_us is None else now_us)
        for record in records:
            # One at a time: the tracker has already let go of them, so a call whose billing
            # hits a bug must not take the rest of this tick's calls with it.
            try:
                self.bill(Billable("", record))
            except Exception as exc:
                self.failed("expire", exc, None)
        return len(records)

    # -- billing -------------------------------------------------------------------------
    def bill(self, item: Billable) -> None:
        """Attribute, rate and hand one finished call to the sink."""
        tx = self.transaction(item)
        self.sink(item, tx)

    def attribute(self, item: Billable) -> Attribution:
        """Attribution from the CDR's named parties, else from the record's hops."""
        attributor = self.runtime.attributor
        found = attributor.attribute(item.record)
        if item.trunk is None and item.client is None:
            return found
        return attributor.named(
            trunk=item.trunk if item.trunk is not None else found.trunk,
            client=item.client if item.client is not None else found.client,
        )

    def entry(self, item: Billable) -> CallEntry:
        """Rate a finished call for its three parties and build its history entry."""
        record = item.record
        who = self.attribute(item)
        rated = self.runtime.rater.rate(record.callee, who.trunk, who.client, record.start,
                                        record.billsec, record.answer is not None)
        legs, flags = rating_fields(rated, record.flags)
        return CallEntry(
            call_uid=item.uid or record.uid,
            call_id=record.call_id,
            trunk=who.trunk,
            customer=who.customer,
            client=who.client,
            network=who.network,
            reseller=who.reseller,
            caller=record.caller,
            callee=record.callee,
            number=rated.number,
            start=record.start,
            answer=record.answer,
            end=record.end,
            billsec=record.billsec,
            sip_code=record.sip_code,
            disposition=record.disposition.value,
            legs=legs,
            margin=rated.margin,
            flags=flags,
        )

    def rerate_entry(self, old: CallEntry) -> CallEntry:
        """Rate a call from history again with the running plans, same attribution.

        Only its unrated legs are priced anew: a leg that was rated keeps the row and the
        amount it was billed with (SPEC §5: "history keeps the rate that was applied"), even
        if a row added since would price it otherwise.
        """
        fresh = self.runtime.rater.rate(old.callee, old.trunk, old.client, old.start,
                                        old.billsec, old.answer is not None)
        kept = {leg.party: leg for leg in old.legs if leg.rated}
        customer = kept.get(Party.CUSTOMER, fresh.customer)
        vmgateclient = kept.get(Party.VMGATECLIENT, fresh.vmgateclient)
        reseller = kept.get(Party.RESELLER, fresh.reseller)
        margin = customer.amount - vmgateclient.amount - (reseller.amount if reseller else 0)
        rated = RatedCall(fresh.number, fresh.start, fresh.billsec, customer, vmgateclient,
                          reseller, margin)
        legs, flags = rating_fields(rated, old.flags)
        return replace(old, number=rated.number, legs=legs, margin=rated.margin, flags=flags)

    def transaction(self, item: Billable) -> Transaction:
        """The ledger transaction for a finished call (key `call:<uid>`)."""
        entry = self.entry(item)
        # created = the call's end (capture time), so a replay writes the same transaction.
        return call_tx(entry, self.runtime.config.tenant.currency, entry.end)


_DERIVED_FLAGS = ("negative_margin", "unrated")


def rating_fields(
    rated: RatedCall, base_flags: tuple[str, ...]
) -> tuple[tuple[Leg, ...], tuple[str, ...]]:
    """The legs present and the flags a rating adds (replacing any earlier rating's flags)."""
    legs = tuple(leg for leg in (rated.customer, rated.vmgateclient, rated.reseller) if leg)
    flags = tuple(f for f in base_flags if f not in _DERIVED_FLAGS)
    if rated.negative_margin:
        flags = (*flags, "negative_margin")
    if rated.unrated:
        flags = (*flags, "unrated")
    return legs, flags
