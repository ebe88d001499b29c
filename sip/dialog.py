"""Dialog tracker: SIP messages with their capture time in, one `CallRecord` per call out.

Rules (SPEC §4, RFC 3261, RFC 4028):

- A dialog is keyed by Call-ID + From-tag; a message from the callee side is found by its
  To-tag. Two dialogs sharing a HEP correlation id (different Call-IDs) are one call: the legs
  of a B2BUA.
- start = earliest captured copy of the initial INVITE; answer = first 2xx whose CSeq is the
  initial INVITE's (after a 401/407 the retry with a higher CSeq is the same call), on the
  call's first leg when it is a B2BUA's (another leg's 2xx stands in until that one is seen);
  end = first BYE of the confirmed dialog, either direction — also when that BYE arrived
  before the 2xx that confirmed it (copies from two capture agents, out of order: the call
  then ends as soon as the 2xx comes), and never before the answer (a BYE stamped earlier by a
  clock slightly behind ends the call at its answer, 0 s).
- A tracing proxy captures every message twice (in and out) and retransmissions come again:
  copies only add hops, never a second record. After its record is out, a dialog lingers for
  `linger_us` to absorb late copies, then is dropped: memory stays bounded.
- `expire(now)` closes what is overdue: answered calls at `max_duration` or at the RFC 4028
  session expiry (last refresh + Session-Expires), flagged; unanswered calls without a final
  response as `timeout`.
- Two clocks: a call's times are its capture agent's (HEP timestamps), `expire`'s `now` is the
  caller's. When `feed` is also given the receive time, each call keeps the offset between the
  two (at its latest packet) and is expired on its own capture clock (`now` − offset): an
  agent whose clock is hours off (a failed NTP sync) neither has its calls closed at once as
  overdue — billed `max_duration` each — nor held past their time. Without receive times
  (capture replay, where `now` is itself capture time) the offset is 0.

The transitions live in `sip.transitions.TRANSITIONS`; this module classifies messages and
carries out effects. Time is always passed in, never read; nothing here logs or raises on
the per-message path.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from sip.call import Addr, CallRecord, Disposition, Hop
from sip.jsonstream import Member, members
from sip.message import SipMessage
from sip.transitions import TRANSITIONS, Effect, Event, State

__all__ = [
    "STATE_FORMAT", "ActiveCall", "ActivePath", "StateError", "Tracker", "TrackerState",
    "TrackerStats",
    "disposition", "encode_state",
]  # fmt: skip

# Bump when the export layout changes. Format 1 (a JSON object per call) is still read, so a
# snapshot written before an upgrade restores after it; restore refuses anything else.
STATE_FORMAT = 3  # 3: each call's clock offset (`skew`) after its legs; 2 reads as offset 0
_STATE_MAGIC = "vmgated.sip.dialog"
_STATE_CHUNK = 2_000  # calls per json.dumps call: the GIL is free between two (see encode_state)

_OVERDUE_NOTHING = 1 << 62


class StateError(ValueError):
    """An exported tracker state that cannot be restored (corrupt, or a format we don't know)."""


@dataclass(frozen=True, slots=True)
class ActiveCall:
    """A call in progress, as `vmgatectl calls --active` and the active-call gauges see it."""

    call_id: str
    caller: str
    callee: str
    start: int
    answer: int | None
    hops: tuple[Hop, ...]
    capture_ids: tuple[int, ...]


class ActivePath(NamedTuple):
    """How many calls in progress share one path (hops and capture ids, as attribution reads)."""

    hops: tuple[Hop, ...]
    capture_ids: tuple[int, ...]
    calls: int


@dataclass(slots=True)
class TrackerStats:
    """Counters of what the tracker absorbed or could not place (exported as metrics)."""

    calls: int = 0  # dialogs that started a call
    records: int = 0  # CallRecords emitted
    duplicates: int = 0  # copies/retransmissions of the INVITE or the answer
    late: int = 0  # messages for a call whose record is already out
    unknown_bye: int = 0  # BYE for a dialog never seen (or long gone)
    in_dialog_without_dialog: int = 0  # other in-dialog request with no dialog
    orphan_responses: int = 0  # response for no known dialog
    forked_answers: int = 0  # 2xx from a second fork: ignored, the first answer wins
    stray_bye: int = 0  # BYE whose tags don't match the confirmed dialog (other fork, early)
    b2bua_legs: int = 0  # dialogs joined to another call by correlation id
    overflow: int = 0  # new calls refused because `max_active` was reached
    ignored: int = 0  # out-of-dialog non-INVITE (REGISTER, OPTIONS, ...)


class _Call:
    """Billing state of one call (shared by its B2BUA legs)."""

    __slots__ = (
        "answer", "call_id", "callee", "caller", "cancelled", "capture_ids", "code",
        "correlation_id", "from_tag", "hops", "last_ts", "legs", "refresh_cseq",
        "refresh_ts", "session_expires", "skew", "start",
    )  # fmt: skip

    def __init__(
        self, call_id: str, from_tag: str, caller: str, callee: str, start: int,
        correlation_id: str | None,
    ) -> None:  # fmt: skip
        self.call_id = call_id
        self.from_tag = from_tag
        self.caller = caller
        self.callee = callee
        self.start = start
        self.answer: int | None = None
        self.code = 0
        self.cancelled = False
        self.correlation_id = correlation_id
        # Tuples, not lists: they grow once or twice per call, and a snapshot shares them
        # instead of copying (a list and a set of hop keys cost ~400 B more per call).
        self.hops: tuple[Hop, ...] = ()
        self.capture_ids: tuple[int, ...] = ()
        self.legs: tuple[_Dialog, ...] = ()  # a B2BUA call gains a second one
        self.last_ts = start
        self.refresh_ts = 0
        self.refresh_cseq = -1  # CSeq of the last refreshing request (-1: the initial INVITE)
        self.session_expires: int | None = None
        self.skew = 0  # receive time − capture time at the packet that set last_ts (µs)


class _Dialog:
    """SIP state of one dialog (one leg of a call)."""

    __slots__ = ("call", "early_bye", "invite_cseq", "key", "origin", "reject_code",
                 "reject_ts", "state", "to_tag")  # fmt: skip

    def __init__(self, key: tuple[str, str | None], call: _Call | None, cseq: int, origin: Addr):
        self.key = key
        self.call = call
        self.state = State.TRYING
        self.invite_cseq = cseq
        self.to_tag: str | None = None
        self.origin = origin  # where this leg's INVITE came from: a rejection sent there is final
        self.reject_code = 0
        self.reject_ts = 0
        # (callee tag, capture time) of a BYE seen before any 2xx: copies from two capture
        # agents can arrive out of order, and a call answered and hung up within the gap
        # would otherwise never see its BYE again and run to max_duration. Not in snapshots.
        self.early_bye: tuple[str, int] | None = None


def disposition(code: int, cancelled: bool) -> Disposition:
    """How an operator reads a final response code to the initial INVITE."""
    if 200 <= code < 300:
        return Disposition.ANSWERED
    if code == 487 or (cancelled and code == 0):
        return Disposition.CANCELLED
    if code in (486, 600):
        return Disposition.BUSY
    if code in (408, 480):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


# INVITE hops (and capture agent ids) kept per call; real paths have 2-6 hops (UAC,
# proxies, SBC, gateway) seen by one or two agents.
MAX_HOPS = 16
_INVITE = "INVITE"
_S_ENDED = State.ENDED


class Tracker:
    """Turns captured SIP messages into `CallRecord`s, exactly one per call.

    `max_duration_us` caps an answered call whose BYE never comes; `linger_us` is how long a
    finished dialog is kept to absorb late copies (RFC 3261 Timer B/F: 32 s); `setup_timeout_us`
    is how long an unanswered call may stay silent before it is closed as a timeout (longer than
    a proxy's Timer C of 3 min); `max_active` bounds memory under an INVITE flood.
    """

    def __init__(
        self,
        max_duration_us: int = 3 * 3600 * 10**6,
        linger_us: int = 32 * 10**6,
        setup_timeout_us: int = 300 * 10**6,
        max_active: int = 2_000_000,
    ) -> None:
        self.max_duration_us = max_duration_us
        self.linger_us = linger_us
        self.setup_timeout_us = setup_timeout_us
        self.max_active = max_active
        self.stats = TrackerStats()
        self._dialogs: dict[tuple[str, str | None], _Dialog] = {}
        self._active: dict[tuple[str, str | None], _Call] = {}  # by the first leg's key
        # Calls by correlation id *and* by Call-ID: capture agents (heplify, HOMER-style
        # B2BUA tracing) give a B-leg the A-leg's Call-ID as its correlation id.
        self._by_corr: dict[str, _Call] = {}
        self._linger: dict[tuple[str, str | None], int] = {}  # key -> ended at; insertion order

    def __len__(self) -> int:
        """Number of calls in progress (set up or answered, record not yet emitted)."""
        return len(self._active)

    # -- per message -------------------------------------------------------------------------

    def feed(
        self,
        msg: SipMessage,
        ts_us: int,
        src: Addr,
        dst: Addr,
        capture_id: int | None = None,
        correlation_id: str | None = None,
        received_us: int | None = None,
    ) -> list[CallRecord]:
        """Account for one captured message; returns the calls it finished (usually none).

        `received_us`: when the message reached us, on the clock `expire` is given (see the
        module doc); None means that clock is the capture clock.
        """
        dialogs = self._dialogs
        d = dialogs.get((msg.call_id, msg.from_tag))
        forward = True
        if d is None and msg.to_tag is not None:
            d = dialogs.get((msg.call_id, msg.to_tag))
            forward = False
        if d is None:
            self._new_dialog(msg, ts_us, src, dst, capture_id, correlation_id, received_us)
            return []
        if d.state is _S_ENDED:
            self.stats.late += 1
            return []
        call = d.call
        assert call is not None  # only ENDED dialogs drop their call
        if ts_us > call.last_ts:
            call.last_ts = ts_us
            if received_us is not None:
                call.skew = received_us - ts_us
        if capture_id is not None and capture_id not in call.capture_ids:
            _add_capture_id(call, capture_id)

        event = self._classify(msg, d, call, forward, dst, ts_us)
        step = TRANSITIONS.get((d.state, event))
        if step is None:
            return []
        d.state, effect = step
        if effect == Effect.NONE:
            return []
        # Lingering runs on `expire`'s clock, like everything `expire` compares.
        now = ts_us if received_us is None else received_us
        return self._apply(effect, msg, d, call, ts_us, now, src, dst, capture_id)

    def _new_dialog(
        self, msg: SipMessage, ts: int, src: Addr, dst: Addr, capture_id: int | None,
        correlation_id: str | None, received_us: int | None,
    ) -> None:  # fmt: skip
        method = msg.method
        st = self.stats
        if method != _INVITE or msg.to_tag is not None:
            if method is None:
                st.orphan_responses += 1
            elif method == "BYE":
                st.unknown_bye += 1
            elif msg.to_tag is not None:
                st.in_dialog_without_dialog += 1
            else:
                st.ignored += 1
            return
        key = (msg.call_id, msg.from_tag)
        call = None
        if correlation_id is not None:
            call = self._by_corr.get(correlation_id)
            if call is not None and call.call_id == msg.call_id:
                call = None  # same Call-ID, other From-tag: a separate dialog, not a B2BUA leg
        if call is None:
            if len(self._active) >= self.max_active:
                st.overflow += 1
                return
            call = _Call(
                msg.call_id, msg.from_tag or "", msg.from_user, msg.ruri_user or "", ts,
                correlation_id,
            )  # fmt: skip
            if received_us is not None:
                call.skew = received_us - ts
            self._active[key] = call
            self._index(call)
            st.calls += 1
        else:
            st.b2bua_legs += 1
            if ts < call.start:
                call.start = ts
            if ts > call.last_ts:
                call.last_ts = ts
                if received_us is not None:
                    call.skew = received_us - ts
        d = _Dialog(key, call, msg.cseq_num, _shared(_ADDRS, src))
        call.legs = (*call.legs, d)
        self._dialogs[key] = d
        if capture_id is not None and capture_id not in call.capture_ids:
            _add_capture_id(call, capture_id)
        _add_hop(call, src, dst, capture_id)

    def _index(self, call: _Call) -> None:
        by = self._by_corr
        by.setdefault(call.call_id, call)
        if call.correlation_id is not None:
            by.setdefault(call.correlation_id, call)

    def _classify(
        self, msg: SipMessage, d: _Dialog, call: _Call, forward: bool, dst: Addr, ts: int
    ) -> int:
        method = msg.method
        if method is not None:
            if method == _INVITE:
                if msg.to_tag is None and forward:
                    if msg.cseq_num == d.invite_cseq:
                        return Event.INVITE_COPY
                    if msg.cseq_num > d.invite_cseq:
                        return Event.INVITE_RETRY
                return Event.OTHER  # re-INVITE: only its 2xx matters (a refresh)
            if method == "BYE":
                tag = msg.to_tag if forward else msg.from_tag
                if d.to_tag is not None and tag == d.to_tag:
                    return Event.BYE
                self.stats.stray_bye += 1
                if d.to_tag is None and tag is not None and call.answer is None:
                    early = d.early_bye
                    if early is None or (early[0] == tag and ts < early[1]):
                        d.early_bye = (tag, ts)
                return Event.OTHER
            if method == "CANCEL" and forward and msg.cseq_num == d.invite_cseq:
                return Event.CANCEL
            return Event.OTHER
        status = msg.status
        cmethod = msg.cseq_method
        if forward and cmethod == _INVITE and msg.cseq_num == d.invite_cseq:
            if status < 200:
                return Event.PROVISIONAL
            if status < 300:
                return Event.ANSWER
            if status == 401 or status == 407:
                return Event.AUTH
            return Event.REJECT if dst == d.origin else Event.REJECT_HOP
        if status == 481 or status == 408:
            if cmethod != "BYE" and cmethod != "CANCEL" and cmethod != "ACK":
                return Event.DIALOG_GONE
            return Event.OTHER
        if 200 <= status < 300 and (cmethod == _INVITE or cmethod == "UPDATE"):
            if forward and cmethod == _INVITE and msg.cseq_num < d.invite_cseq:
                return Event.OTHER  # a late reply to a challenged attempt
            return Event.REFRESH
        return Event.OTHER

    def _apply(
        self, effect: int, msg: SipMessage, d: _Dialog, call: _Call, ts: int, now: int,
        src: Addr, dst: Addr, capture_id: int | None,
    ) -> list[CallRecord]:  # fmt: skip
        if effect == Effect.HOP:
            if ts < call.start:
                call.start = ts
            if not _add_hop(call, src, dst, capture_id):
                self.stats.duplicates += 1
        elif effect == Effect.ANSWER:
            _add_responder(call, src, dst, capture_id)
            first_leg = call.legs[0]
            # SPEC §4: answered at the first 2xx to the call's first INVITE. On a B2BUA the
            # callee's 2xx on the outgoing leg comes a few ms before the B2BUA's own 2xx to
            # the caller: it stands in only until the first leg's is seen (or for good, when
            # that one is never captured).
            takes_over = d is first_leg and d.to_tag is None
            if d.to_tag is None:
                d.to_tag = msg.to_tag
            elif msg.to_tag != d.to_tag:
                self.stats.forked_answers += 1
                return []
            else:
                self.stats.duplicates += 1
            if takes_over or call.answer is None or (
                ts < call.answer and (d is first_leg or first_leg.to_tag is None)
            ):
                call.answer = ts
                call.refresh_ts = ts
            if msg.session_expires is not None:
                call.session_expires = msg.session_expires
            call.code = msg.status
            early = d.early_bye
            if early is not None and early[0] == d.to_tag and call.answer is not None:
                # The dialog's BYE came first (reordered copies): it ends the call now.
                return [self._finish(call, early[1], now, ())]
        elif effect == Effect.RETRY:
            d.invite_cseq = msg.cseq_num
            _add_hop(call, src, dst, capture_id)
        elif effect == Effect.NOTE_REJECT:
            _add_responder(call, src, dst, capture_id)
            if d.reject_code != msg.status or ts < d.reject_ts:
                d.reject_code = msg.status
                d.reject_ts = ts
        elif effect == Effect.REJECT:
            _add_responder(call, src, dst, capture_id)
            if d is not call.legs[0]:
                # A B2BUA's outgoing leg failed; it may try another route. The call fails only
                # when its first leg is rejected.
                self._drop_leg(d, now)
                return []
            call.code = msg.status
            end = ts
            if d.reject_code == msg.status and d.reject_ts and d.reject_ts < ts:
                end = d.reject_ts  # first copy of the same rejection, captured downstream
            return [self._finish(call, end, now, ())]
        elif effect == Effect.NOTE_CANCEL:
            call.cancelled = True
        elif effect == Effect.END:
            return [self._finish(call, ts, now, ())]
        elif effect == Effect.END_GONE:
            return [self._finish(call, ts, now, (f"ended_by_{msg.status}",))]
        elif effect == Effect.REFRESH:
            # Copies of one refreshing 2xx keep its first capture time; a newer one moves on.
            if msg.cseq_num != call.refresh_cseq:
                call.refresh_cseq = msg.cseq_num
                call.refresh_ts = ts
                call.session_expires = msg.session_expires
            elif ts < call.refresh_ts:
                call.refresh_ts = ts
        return []

    # -- closing -----------------------------------------------------------------------------

    def _finish(
        self, call: _Call, end: int, now: int, flags: tuple[str, ...], timeout: bool = False
    ) -> CallRecord:
        if call.answer is not None:
            code = call.code if 200 <= call.code < 300 else 200
            disp = Disposition.ANSWERED
        elif timeout:
            code = 487 if call.cancelled else 408
            disp = Disposition.CANCELLED if call.cancelled else Disposition.TIMEOUT
        else:
            code = call.code
            disp = disposition(code, call.cancelled)
        first = call.legs[0]
        self._active.pop(first.key, None)
        for k in (call.call_id, call.correlation_id):
            if k is not None and self._by_corr.get(k) is call:
                del self._by_corr[k]
        for leg in call.legs:
            self._drop_leg(leg, now)
        self.stats.records += 1
        return CallRecord(
            call_id=call.call_id,
            from_tag=call.from_tag,
            caller=call.caller,
            callee=call.callee,
            start=call.start,
            answer=call.answer,
            # Never before the answer: a BYE stamped earlier (another capture agent's clock
            # slightly behind) ends the call at its answer, billing 0 s, not a negative span.
            end=max(end, call.start, call.answer if call.answer is not None else end),
            sip_code=code,
            disposition=disp,
            hops=call.hops,
            capture_ids=call.capture_ids,
            correlation_id=call.correlation_id,
            flags=flags,
        )

    def _drop_leg(self, d: _Dialog, now: int) -> None:
        d.state = _S_ENDED
        d.call = None
        self._linger[d.key] = now

    def expire(self, now_us: int) -> list[CallRecord]:
        """Close every overdue call as of `now_us` and forget lingering dialogs.

        `now_us` is on the clock of `feed`'s `received_us` (the capture clock when there is
        none); each call is judged on its own capture clock, `now_us` − its offset. Cost is one
        pass over the calls in progress; call it about once a second.
        """
        out: list[CallRecord] = []
        for call in list(self._active.values()):
            first = call.legs[0]
            now = now_us - call.skew
            if call.answer is not None:
                deadline = call.answer + self.max_duration_us
                flag = "max_duration"
                if call.session_expires:
                    se_end = call.refresh_ts + call.session_expires * 1_000_000
                    if se_end < deadline:
                        deadline, flag = se_end, "session_expired"
                if now >= deadline:
                    out.append(self._finish(call, deadline, now_us, (flag,)))
            elif first.state is State.CHALLENGED:
                # The retry after 401/407 comes within a round trip; a caller that never sends
                # it has failed with the challenge code.
                if now >= call.last_ts + self.linger_us:
                    call.code = first.reject_code
                    out.append(self._finish(call, first.reject_ts, now_us, ()))
            elif now >= call.last_ts + self.setup_timeout_us:
                if first.state is State.REJECTED:
                    # The rejection never reached the caller in this capture: it is final anyway.
                    call.code = first.reject_code
                    out.append(self._finish(call, first.reject_ts, now_us, ()))
                else:
                    out.append(self._finish(call, call.last_ts, now_us, ("setup_timeout",), True))
        # One pass collects the overdue keys, then they are deleted. Deleting as it went,
        # with `next(iter(linger))` for each key, rescanned the slots of every key deleted
        # since the dict last compacted: quadratic, 47 ms a second at 60,000 packets/s once
        # ~160,000 dialogs lingered (bench/e2e.py, 2026-11-24).
        linger = self._linger
        cutoff = now_us - self.linger_us
        overdue = []
        for key, ended in linger.items():
            if ended > cutoff:
                break
            overdue.append(key)
        dialogs = self._dialogs
        for key in overdue:
            del linger[key]
            d = dialogs.get(key)
            if d is not None and d.state is _S_ENDED:
                del dialogs[key]
        return out

    def active(self) -> Iterator[ActiveCall]:
        """The calls in progress (one per call, B2BUA legs joined)."""
        for call in list(self._active.values()):
            yield ActiveCall(
                call.call_id, call.caller, call.callee, call.start, call.answer,
                call.hops, call.capture_ids,
            )  # fmt: skip

    def active_paths(self) -> list[ActivePath]:
        """The calls in progress counted per (hops, capture ids): one entry per distinct path.

        For gauges that only need who a call belongs to, which depends on nothing else: calls
        through the same trunk, proxy and gateway share their hop and capture-id tuples (see
        `_shared`), so 100,000 calls fold into a handful of entries, and the caller attributes
        each path once instead of each call (a /metrics scrape at 100,000 calls: 335 ms → see
        bench/README.md "Active calls"). Grouped by identity, so equal paths that are not
        shared (an intern table that started afresh) come out as separate entries; the counts
        still add up to every call.
        """
        groups: dict[tuple[int, int], list[Any]] = {}
        for call in self._active.values():
            hops, capture_ids = call.hops, call.capture_ids
            key = (id(hops), id(capture_ids))
            group = groups.get(key)
            if group is None:
                groups[key] = [hops, capture_ids, 1]
            else:
                group[2] += 1
        return [ActivePath(hops, capture_ids, n) for hops, capture_ids, n in groups.values()]

    # -- persistence -------------------------------------------------------------------------

    def capture(self) -> TrackerState:
        """A consistent copy of every call in progress and every lingering dialog.

        Only immutable values are copied (the hops are frozen `Hop`s, shared), so this is the
        only part of a snapshot that has to run between two feeds: `encode_state` can then
        run anywhere, e.g. on a thread while the event loop goes on feeding. At 100,000
        active calls it takes ~0.3 s and ~37 MB where serialising everything at once took
        2.3 s and ~250 MB of transient objects (bench/active.py).
        """
        call_fields, leg_fields = _CALL_FIELDS, _LEG_FIELDS
        # Hundreds of thousands of new tuples would start full collections over the whole
        # heap, which found nothing to free here and tripled the time.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            calls = [
                (call_fields(c), tuple(map(leg_fields, c.legs))) for c in self._active.values()
            ]
        finally:
            if was_enabled:
                gc.enable()
        return TrackerState(tuple(calls), tuple(self._linger.items()), asdict(self.stats))

    def export_state(self) -> bytes:
        """Serialise every call in progress and every lingering dialog (versioned JSON)."""
        return b"".join(encode_state(self.capture()))

    @classmethod
    def restore_state(cls, data: bytes, **kwargs: Any) -> Tracker:
        """Rebuild a tracker from `export_state()` output; `kwargs` go to the constructor.

        Reads format 2 and the format 1 of earlier builds. Raises `StateError` for anything
        that is not a state one of them wrote. The calls and lingering dialogs are decoded one
        at a time (`sip.jsonstream`) once the format and version are known, which is how
        `encode_state` orders them; a document in another order is still read, whole.
        """
        t = cls(**kwargs)
        try:
            head: dict[str, Any] = {}
            waiting: list[Member] = []  # elements read before the format and version
            for member in members(bytes(data).decode("utf-8"), _STREAMED):
                if not member.element:
                    if member.name in _STREAMED:
                        raise StateError(f"{member.name!r} is not an array")
                    head[member.name] = member.value
                elif "format" in head and "version" in head:
                    t._restore_member(_check_head(head), member)
                else:
                    waiting.append(member)
            version = _check_head(head)
            for member in waiting:
                t._restore_member(version, member)
            known = {f.name for f in fields(TrackerStats)}
            t.stats = TrackerStats(**{k: int(v) for k, v in head["stats"].items() if k in known})
        except StateError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise StateError(f"dialog state is corrupt: {exc!r}") from None
        return t

    def _restore_member(self, version: int, member: Member) -> None:
        """One streamed element: a call in progress or a lingering dialog."""
        if member.name == "calls":
            row = member.value
            if version == 1:
                row = [*_row_of_v1(row), 0]
            elif version == 2:
                row = [*row, 0]  # no clock offset was kept: the capture clock is ours
            self._restore_call(row)
            return
        call_id, from_tag, ended = member.value
        key = (str(call_id), from_tag)
        d = _Dialog(key, None, 0, ("", 0))
        d.state = _S_ENDED
        self._dialogs[key] = d
        self._linger[key] = int(ended)

    def _restore_call(self, row: list[Any]) -> None:
        """Rebuild one call in progress from its format 3 row (see `CallRow`)."""
        (call_id, from_tag, caller, callee, start, answer, code, cancelled, correlation_id,
         hops, capture_ids, last_ts, refresh_ts, refresh_cseq, session_expires,
         legs, skew) = row  # fmt: skip
        call = _Call(call_id, from_tag, caller, callee, int(start), correlation_id)
        call.answer = answer
        call.code = int(code)
        call.cancelled = bool(cancelled)
        for sip, sport, dip, dport, cid in hops:
            _add_hop(call, (str(sip), int(sport)), (str(dip), int(dport)), cid)
        call.capture_ids = _shared(_CAPTURE_IDS, tuple(int(x) for x in capture_ids))
        call.last_ts = int(last_ts)
        call.refresh_ts = int(refresh_ts)
        call.refresh_cseq = int(refresh_cseq)
        call.session_expires = session_expires
        call.skew = int(skew)
        for key0, key1, state, invite_cseq, to_tag, origin_ip, origin_port, rcode, rts in legs:
            key = (str(key0), key1)
            d = _Dialog(
                key, call, int(invite_cseq), _shared(_ADDRS, (str(origin_ip), int(origin_port)))
            )
            d.state = State[state]
            d.to_tag = to_tag
            d.reject_code = int(rcode)
            d.reject_ts = int(rts)
            call.legs = (*call.legs, d)
            self._dialogs[key] = d
        if not call.legs:
            raise StateError(f"call {call.call_id!r} has no dialog")
        self._active[call.legs[0].key] = call
        self._index(call)


class TrackerState(NamedTuple):
    """What `Tracker.capture` copies: immutable, so it can be encoded off the event loop."""

    calls: tuple[CallRow, ...]
    lingering: tuple[tuple[tuple[str, str | None], int], ...]  # ((Call-ID, From-tag), ended)
    stats: dict[str, int]


# One call in progress, as `capture` copies it: (_CALL_FIELDS, each leg's _LEG_FIELDS); the
# call's hops and capture ids are immutable tuples, shared with the live call, not copied
# (~360 B per call in all). Format 2 writes it flat, as one JSON array: the call's fields
# (hops as [src ip, src port, dst ip, dst port, capture id]), then the live (not ENDED) legs
# as [Call-ID, From-tag, state name, INVITE CSeq, To-tag, origin ip, origin port, reject
# code, reject ts]; format 3 adds the call's clock offset after the legs.
CallRow = tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]]
_CALL_FIELDS = attrgetter(
    "call_id", "from_tag", "caller", "callee", "start", "answer", "code", "cancelled",
    "correlation_id", "hops", "capture_ids", "last_ts", "refresh_ts", "refresh_cseq",
    "session_expires", "skew",
)  # fmt: skip
_HOPS_AT = 9  # index of the hops in _CALL_FIELDS
_LEG_FIELDS = attrgetter(
    "key", "state", "invite_cseq", "to_tag", "origin", "reject_code", "reject_ts"
)  # fmt: skip
_JSON = json.JSONEncoder(separators=(",", ":"))


def _json_array(items: tuple[Any, ...], convert: Any) -> Iterator[bytes]:
    """`items` as one JSON array, written `_STATE_CHUNK` items per json.dumps call."""
    yield b"["
    for lo in range(0, len(items), _STATE_CHUNK):
        piece = _JSON.encode([convert(x) for x in items[lo : lo + _STATE_CHUNK]])
        yield (piece[1:-1] if lo == 0 else "," + piece[1:-1]).encode()
    yield b"]"


def _call_json(row: CallRow) -> list[Any]:
    call, legs = row
    return [
        *call[:_HOPS_AT],
        [[*h.src, *h.dst, h.capture_id] for h in call[_HOPS_AT]],
        *call[_HOPS_AT + 1 : -1],
        [
            [key[0], key[1], state.name, cseq, to_tag, origin[0], origin[1], rcode, rts]
            for key, state, cseq, to_tag, origin, rcode, rts in legs
            if state is not _S_ENDED
        ],
        call[-1],  # skew
    ]


def _linger_json(item: tuple[tuple[str, str | None], int]) -> list[Any]:
    (call_id, from_tag), ended = item
    return [call_id, from_tag, ended]


def encode_state(state: TrackerState) -> Iterator[bytes]:
    """The JSON bytes of a captured state, in pieces (`b"".join` them, or write each).

    A piece is at most `_STATE_CHUNK` calls, one json.dumps call each: run on a thread, the
    encoder holds the GIL for one piece at a time, so the event loop is never held up for
    the whole state (a single json.dumps of 100,000 calls holds it for ~1 s).
    """
    head = {"format": _STATE_MAGIC, "version": STATE_FORMAT, "stats": state.stats}
    yield _JSON.encode(head)[:-1].encode() + b',"lingering":'
    yield from _json_array(state.lingering, _linger_json)
    yield b',"calls":'
    yield from _json_array(state.calls, _call_json)
    yield b"}"


_STREAMED = frozenset(("calls", "lingering"))


def _check_head(head: dict[str, Any]) -> int:
    """The state's format version, once its magic and version are known to be ours."""
    if head.get("format") != _STATE_MAGIC:
        raise StateError("not a vmgated dialog state")
    version = head.get("version")
    if version not in (1, 2, STATE_FORMAT):
        raise StateError(f"dialog state format {version!r}; this build reads 1 to {STATE_FORMAT}")
    return int(version)


def _row_of_v1(c: dict[str, Any]) -> list[Any]:
    """A format 1 call object as a format 2 row."""
    legs = [
        [*leg["key"], leg["state"], leg["invite_cseq"], leg["to_tag"], *leg["origin"],
         leg["reject_code"], leg["reject_ts"]]
        for leg in c["legs"]
    ]  # fmt: skip
    return [
        c["call_id"], c["from_tag"], c["caller"], c["callee"], c["start"], c["answer"],
        c["code"], c["cancelled"], c["correlation_id"], c["hops"], c["capture_ids"],
        c["last_ts"], c["refresh_ts"], c["refresh_cseq"], c["session_expires"], legs,
    ]  # fmt: skip


def _add_hop(call: _Call, src: Addr, dst: Addr, capture_id: int | None) -> bool:
    """Record a (src, dst) copy of the initial INVITE; False if that hop was already known."""
    hops = call.hops
    for hop in hops:  # two or three hops: a scan beats a set of keys per call
        if hop.src == src and hop.dst == dst:
            return False
    if len(hops) >= MAX_HOPS:
        return False  # forged copies from ever new addresses must not grow a call unbounded
    hop = _shared(_HOPS, Hop(_shared(_ADDRS, src), _shared(_ADDRS, dst), capture_id))
    call.hops = _shared(_PATHS, (*hops, hop))
    return True


def _add_responder(call: _Call, src: Addr, dst: Addr, capture_id: int | None) -> None:
    """Record who answered or refused the initial INVITE, as the hop its reply implies.

    SPEC §4 gives the client by "the hop whose destination (or the responder ...)" matches
    it. A reply from R to P means P's INVITE reached R, so the reply is kept as the hop
    P → R: behind a load balancer or NAT, or when a gateway replies from another port, R is
    the gateway even though no captured INVITE was addressed to it. In the usual case the
    reply comes back along a captured INVITE hop, which is already known: nothing is added
    (no memory per call), and INVITE hops stay first, so they decide before responders.
    """
    _add_hop(call, dst, src, capture_id)


def _add_capture_id(call: _Call, capture_id: int) -> None:
    if len(call.capture_ids) < MAX_HOPS:  # bounded like the hops, for the same reason
        call.capture_ids = _shared(_CAPTURE_IDS, (*call.capture_ids, capture_id))


_V = TypeVar("_V")
_SHARED_MAX = 1 << 14  # distinct values kept per table; a table is cleared when full
_ADDRS: dict[Addr, Addr] = {}
_HOPS: dict[Hop, Hop] = {}
_PATHS: dict[tuple[Hop, ...], tuple[Hop, ...]] = {}
_CAPTURE_IDS: dict[tuple[int, ...], tuple[int, ...]] = {}


def _shared(table: dict[_V, _V], value: _V) -> _V:
    """The one copy of an immutable value that many calls hold.

    Calls through the same proxy share their addresses, hops, hop paths and capture ids;
    holding one copy of each instead of one per call saves ~400 B per call in progress
    (bench/active.py). Each kind has its own table, so a value never comes back as another
    type that compares equal (a `Hop` and a plain tuple do). Bounded: a table is cleared
    when full, which costs only sharing, never correctness.
    """
    found = table.get(value)
    if found is None:
        if len(table) >= _SHARED_MAX:
            table.clear()
        found = table[value] = value
    return found
