"""Dialog tracker: SIP messages with their capture time in, one `CallRecord` per call out.

Rules (SPEC §4, RFC 3261, RFC 4028):

- A dialog is keyed by Call-ID + From-tag; a message from the callee side is found by its
  To-tag. Two dialogs sharing a HEP correlation id (different Call-IDs) are one call: the legs
  of a B2BUA.
- start = earliest captured copy of the initial INVITE; answer = first 2xx whose CSeq is the
  initial INVITE's (after a 401/407 the retry with a higher CSeq is the same call); end = first
  BYE of the confirmed dialog, either direction.
- A tracing proxy captures every message twice (in and out) and retransmissions come again:
  copies only add hops, never a second record. After its record is out, a dialog lingers for
  `linger_us` to absorb late copies, then is dropped: memory stays bounded.
- `expire(now)` closes what is overdue: answered calls at `max_duration` or at the RFC 4028
  session expiry (last refresh + Session-Expires), flagged; unanswered calls without a final
  response as `timeout`.

The transitions live in `sip.transitions.TRANSITIONS`; this module classifies messages and
carries out effects. Time is always passed in, never read; nothing here logs or raises on
the per-message path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from sip.call import Addr, CallRecord, Disposition, Hop
from sip.message import SipMessage
from sip.transitions import TRANSITIONS, Effect, Event, State

__all__ = ["STATE_FORMAT", "ActiveCall", "StateError", "Tracker", "TrackerStats", "disposition"]

STATE_FORMAT = 1  # bump when the export layout changes; restore refuses what it does not know
_STATE_MAGIC = "vmgated.sip.dialog"

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
        "correlation_id", "from_tag", "hop_keys", "hops", "last_ts", "legs", "refresh_cseq",
        "refresh_ts", "session_expires", "start",
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
        self.hops: list[Hop] = []
        self.hop_keys: set[tuple[Addr, Addr]] = set()
        self.capture_ids: list[int] = []
        self.legs: list[_Dialog] = []
        self.last_ts = start
        self.refresh_ts = 0
        self.refresh_cseq = -1  # CSeq of the last refreshing request (-1: the initial INVITE)
        self.session_expires: int | None = None


class _Dialog:
    """SIP state of one dialog (one leg of a call)."""

    __slots__ = ("call", "invite_cseq", "key", "origin", "reject_code", "reject_ts", "state",
                 "to_tag")  # fmt: skip

    def __init__(self, key: tuple[str, str | None], call: _Call | None, cseq: int, origin: Addr):
        self.key = key
        self.call = call
        self.state = State.TRYING
        self.invite_cseq = cseq
        self.to_tag: str | None = None
        self.origin = origin  # where this leg's INVITE came from: a rejection sent there is final
        self.reject_code = 0
        self.reject_ts = 0


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
    ) -> list[CallRecord]:
        """Account for one captured message; returns the calls it finished (usually none)."""
        dialogs = self._dialogs
        d = dialogs.get((msg.call_id, msg.from_tag))
        forward = True
        if d is None and msg.to_tag is not None:
            d = dialogs.get((msg.call_id, msg.to_tag))
            forward = False
        if d is None:
            self._new_dialog(msg, ts_us, src, dst, capture_id, correlation_id)
            return []
        if d.state is _S_ENDED:
            self.stats.late += 1
            return []
        call = d.call
        assert call is not None  # only ENDED dialogs drop their call
        if ts_us > call.last_ts:
            call.last_ts = ts_us
        if capture_id is not None and capture_id not in call.capture_ids:
            call.capture_ids.append(capture_id)

        event = self._classify(msg, d, call, forward, dst)
        step = TRANSITIONS.get((d.state, event))
        if step is None:
            return []
        d.state, effect = step
        if effect == Effect.NONE:
            return []
        return self._apply(effect, msg, d, call, ts_us, src, dst, capture_id)

    def _new_dialog(
        self, msg: SipMessage, ts: int, src: Addr, dst: Addr, capture_id: int | None,
        correlation_id: str | None,
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
            self._active[key] = call
            self._index(call)
            st.calls += 1
        else:
            st.b2bua_legs += 1
            if ts < call.start:
                call.start = ts
            if ts > call.last_ts:
                call.last_ts = ts
        d = _Dialog(key, call, msg.cseq_num, src)
        call.legs.append(d)
        self._dialogs[key] = d
        if capture_id is not None and capture_id not in call.capture_ids:
            call.capture_ids.append(capture_id)
        _add_hop(call, src, dst, capture_id)

    def _index(self, call: _Call) -> None:
        by = self._by_corr
        by.setdefault(call.call_id, call)
        if call.correlation_id is not None:
            by.setdefault(call.correlation_id, call)

    def _classify(
        self, msg: SipMessage, d: _Dialog, call: _Call, forward: bool, dst: Addr
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
        self, effect: int, msg: SipMessage, d: _Dialog, call: _Call, ts: int, src: Addr,
        dst: Addr, capture_id: int | None,
    ) -> list[CallRecord]:  # fmt: skip
        if effect == Effect.HOP:
            if ts < call.start:
                call.start = ts
            if not _add_hop(call, src, dst, capture_id):
                self.stats.duplicates += 1
        elif effect == Effect.ANSWER:
            if d.to_tag is None:
                d.to_tag = msg.to_tag
            elif msg.to_tag != d.to_tag:
                self.stats.forked_answers += 1
                return []
            else:
                self.stats.duplicates += 1
            if call.answer is None or ts < call.answer:
                call.answer = ts
                call.refresh_ts = ts
            if msg.session_expires is not None:
                call.session_expires = msg.session_expires
            call.code = msg.status
        elif effect == Effect.RETRY:
            d.invite_cseq = msg.cseq_num
            _add_hop(call, src, dst, capture_id)
        elif effect == Effect.NOTE_REJECT:
            if d.reject_code != msg.status or ts < d.reject_ts:
                d.reject_code = msg.status
                d.reject_ts = ts
        elif effect == Effect.REJECT:
            if d is not call.legs[0]:
                # A B2BUA's outgoing leg failed; it may try another route. The call fails only
                # when its first leg is rejected.
                self._drop_leg(d, ts)
                return []
            call.code = msg.status
            end = ts
            if d.reject_code == msg.status and d.reject_ts and d.reject_ts < ts:
                end = d.reject_ts  # first copy of the same rejection, captured downstream
            return [self._finish(call, end, ts, ())]
        elif effect == Effect.NOTE_CANCEL:
            call.cancelled = True
        elif effect == Effect.END:
            return [self._finish(call, ts, ts, ())]
        elif effect == Effect.END_GONE:
            return [self._finish(call, ts, ts, (f"ended_by_{msg.status}",))]
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
            end=max(end, call.start),
            sip_code=code,
            disposition=disp,
            hops=tuple(call.hops),
            capture_ids=tuple(call.capture_ids),
            correlation_id=call.correlation_id,
            flags=flags,
        )

    def _drop_leg(self, d: _Dialog, now: int) -> None:
        d.state = _S_ENDED
        d.call = None
        self._linger[d.key] = now

    def expire(self, now_us: int) -> list[CallRecord]:
        """Close every overdue call as of `now_us` (capture time) and forget lingering dialogs.

        Cost is one pass over the calls in progress; call it about once a second.
        """
        out: list[CallRecord] = []
        for call in list(self._active.values()):
            first = call.legs[0]
            if call.answer is not None:
                deadline = call.answer + self.max_duration_us
                flag = "max_duration"
                if call.session_expires:
                    se_end = call.refresh_ts + call.session_expires * 1_000_000
                    if se_end < deadline:
                        deadline, flag = se_end, "session_expired"
                if now_us >= deadline:
                    out.append(self._finish(call, deadline, now_us, (flag,)))
            elif first.state is State.CHALLENGED:
                # The retry after 401/407 comes within a round trip; a caller that never sends
                # it has failed with the challenge code.
                if now_us >= call.last_ts + self.linger_us:
                    call.code = first.reject_code
                    out.append(self._finish(call, first.reject_ts, now_us, ()))
            elif now_us >= call.last_ts + self.setup_timeout_us:
                if first.state is State.REJECTED:
                    # The rejection never reached the caller in this capture: it is final anyway.
                    call.code = first.reject_code
                    out.append(self._finish(call, first.reject_ts, now_us, ()))
                else:
                    out.append(self._finish(call, call.last_ts, now_us, ("setup_timeout",), True))
        linger = self._linger
        cutoff = now_us - self.linger_us
        dialogs = self._dialogs
        while linger:
            key = next(iter(linger))
            if linger[key] > cutoff:
                break
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
                tuple(call.hops), tuple(call.capture_ids),
            )  # fmt: skip

    # -- persistence -------------------------------------------------------------------------

    def export_state(self) -> bytes:
        """Serialise every call in progress and every lingering dialog (versioned JSON)."""
        calls = []
        for call in self._active.values():
            calls.append(
                {
                    "call_id": call.call_id,
                    "from_tag": call.from_tag,
                    "caller": call.caller,
                    "callee": call.callee,
                    "start": call.start,
                    "answer": call.answer,
                    "code": call.code,
                    "cancelled": call.cancelled,
                    "correlation_id": call.correlation_id,
                    "hops": [[*h.src, *h.dst, h.capture_id] for h in call.hops],
                    "capture_ids": call.capture_ids,
                    "last_ts": call.last_ts,
                    "refresh_ts": call.refresh_ts,
                    "refresh_cseq": call.refresh_cseq,
                    "session_expires": call.session_expires,
                    "legs": [
                        {
                            "key": list(d.key),
                            "state": d.state.name,
                            "invite_cseq": d.invite_cseq,
                            "to_tag": d.to_tag,
                            "origin": list(d.origin),
                            "reject_code": d.reject_code,
                            "reject_ts": d.reject_ts,
                        }
                        for d in call.legs
                        if d.state is not _S_ENDED
                    ],
                }
            )
        doc = {
            "format": _STATE_MAGIC,
            "version": STATE_FORMAT,
            "calls": calls,
            "lingering": [[k[0], k[1], t] for k, t in self._linger.items()],
            "stats": asdict(self.stats),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def restore_state(cls, data: bytes, **kwargs: Any) -> Tracker:
        """Rebuild a tracker from `export_state()` output; `kwargs` go to the constructor.

        Raises `StateError` for anything that is not a state this version wrote.
        """
        t = cls(**kwargs)
        try:
            doc = json.loads(data)
            if doc.get("format") != _STATE_MAGIC:
                raise StateError("not a vmgated dialog state")
            if doc.get("version") != STATE_FORMAT:
                raise StateError(
                    f"dialog state format {doc.get('version')!r}; this build reads {STATE_FORMAT}"
                )
            for c in doc["calls"]:
                call = _Call(
                    c["call_id"], c["from_tag"], c["caller"], c["callee"], int(c["start"]),
                    c["correlation_id"],
                )  # fmt: skip
                call.answer = c["answer"]
                call.code = int(c["code"])
                call.cancelled = bool(c["cancelled"])
                for sip, sport, dip, dport, cid in c["hops"]:
                    _add_hop(call, (str(sip), int(sport)), (str(dip), int(dport)), cid)
                call.capture_ids = [int(x) for x in c["capture_ids"]]
                call.last_ts = int(c["last_ts"])
                call.refresh_ts = int(c["refresh_ts"])
                call.refresh_cseq = int(c["refresh_cseq"])
                call.session_expires = c["session_expires"]
                for leg in c["legs"]:
                    key = (str(leg["key"][0]), leg["key"][1])
                    origin = (str(leg["origin"][0]), int(leg["origin"][1]))
                    d = _Dialog(key, call, int(leg["invite_cseq"]), origin)
                    d.state = State[leg["state"]]
                    d.to_tag = leg["to_tag"]
                    d.reject_code = int(leg["reject_code"])
                    d.reject_ts = int(leg["reject_ts"])
                    call.legs.append(d)
                    t._dialogs[key] = d
                if not call.legs:
                    raise StateError(f"call {call.call_id!r} has no dialog")
                t._active[call.legs[0].key] = call
                t._index(call)
            for call_id, from_tag, ended in doc["lingering"]:
                key = (str(call_id), from_tag)
                d = _Dialog(key, None, 0, ("", 0))
                d.state = _S_ENDED
                t._dialogs[key] = d
                t._linger[key] = int(ended)
            known = {f.name for f in fields(TrackerStats)}
            t.stats = TrackerStats(**{k: int(v) for k, v in doc["stats"].items() if k in known})
        except StateError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise StateError(f"dialog state is corrupt: {exc!r}") from None
        return t


def _add_hop(call: _Call, src: Addr, dst: Addr, capture_id: int | None) -> bool:
    """Record a (src, dst) copy of the initial INVITE; False if that hop was already known."""
    hk = (src, dst)
    if hk in call.hop_keys:
        return False
    call.hop_keys.add(hk)
    call.hops.append(Hop(src, dst, capture_id))
    return True
