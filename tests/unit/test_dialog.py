"""SPEC §4 and issue 3: the dialog tracker bills every call exactly once, with the right times."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipbuild import (
    PROXY,
    UAC,
    UAS,
    callee_request,
    callee_response,
    request,
    response,
)

from sip.call import CallRecord, Disposition, Hop
from sip.dialog import MAX_HOPS, STATE_FORMAT, StateError, Tracker, encode_state
from sip.message import parse
from sip.transitions import TRANSITIONS, State

T0 = 1_700_000_000_000_000
S = 1_000_000
RELAY = 300  # µs between the proxy's "in" and "out" copies


@dataclass
class Wire:
    """A tracing proxy between UAC and UAS: every message is captured in and out."""

    tracker: Tracker = field(default_factory=Tracker)
    records: list[CallRecord] = field(default_factory=list)
    capture_id: int | None = 2001

    def down(self, raw: bytes, ts: int, corr: str | None = None) -> None:
        """Caller → callee: UAC→PROXY at ts, PROXY→UAS RELAY µs later."""
        self.one(raw, ts, UAC, PROXY, corr)
        self.one(raw, ts + RELAY, PROXY, UAS, corr)

    def up(self, raw: bytes, ts: int, corr: str | None = None) -> None:
        """Callee → caller: UAS→PROXY at ts, PROXY→UAC RELAY µs later."""
        self.one(raw, ts, UAS, PROXY, corr)
        self.one(raw, ts + RELAY, PROXY, UAC, corr)

    def one(self, raw: bytes, ts: int, src: tuple[str, int], dst: tuple[str, int],
            corr: str | None = None) -> None:  # fmt: skip
        self.records += self.tracker.feed(parse(raw), ts, src, dst, self.capture_id, corr)

    def answered_call(self, answer_after: int = 3 * S, talk: int = 42 * S + 1) -> None:
        """The 12-packet Kamailio shape (plus ACK once), answered and hung up by the caller."""
        self.down(request("INVITE", 1), T0)
        self.one(response(100, 1, phrase="Trying"), T0 + 100, PROXY, UAC)
        self.up(response(180, 1, phrase="Ringing"), T0 + S)
        self.up(response(200, 1, phrase="OK"), T0 + answer_after)
        self.one(request("ACK", 1, to_tag="callee-tag"), T0 + answer_after + 900, UAC, PROXY)
        self.down(request("BYE", 2, to_tag="callee-tag"), T0 + answer_after + talk)
        self.up(response(200, 2, "BYE"), T0 + answer_after + talk + 500)


def only(records: list[CallRecord]) -> CallRecord:
    assert len(records) == 1, records
    return records[0]


def test_answered_call_times_come_from_the_first_copies() -> None:
    w = Wire()
    w.answered_call()
    r = only(w.records)
    assert (r.start, r.answer, r.end) == (T0, T0 + 3 * S, T0 + 45 * S + 1)
    assert r.billsec == 43  # ceil(42.000001 s)
    assert r.disposition is Disposition.ANSWERED and r.sip_code == 200
    assert (r.caller, r.callee, r.call_id, r.from_tag) == (
        "+15551230000", "+37410123456", "call-1@10.0.0.1", "caller-tag")
    assert r.hops == (Hop(UAC, PROXY, 2001), Hop(PROXY, UAS, 2001))
    assert r.capture_ids == (2001,)
    assert len(w.tracker) == 0


def test_ring_time_is_never_billed() -> None:
    w = Wire()
    w.answered_call(answer_after=30 * S, talk=10 * S)
    assert only(w.records).billsec == 10


def test_retransmissions_and_copies_bill_once() -> None:
    w = Wire()
    inv = request("INVITE", 1)
    w.down(inv, T0)
    w.down(inv, T0 + 500_000)  # Timer A retransmission
    w.up(response(200, 1), T0 + 2 * S)
    w.up(response(200, 1), T0 + 2 * S + 500_000)  # 2xx retransmitted until the ACK
    bye = request("BYE", 2, to_tag="callee-tag")
    w.down(bye, T0 + 5 * S)
    w.down(bye, T0 + 5 * S + 500_000)
    w.up(response(200, 2, "BYE"), T0 + 6 * S)
    r = only(w.records)
    assert (r.start, r.answer, r.end) == (T0, T0 + 2 * S, T0 + 5 * S)
    assert len(r.hops) == 2
    assert w.tracker.stats.duplicates >= 3
    assert w.tracker.stats.late >= 3


def test_a_copy_captured_earlier_but_delivered_later_lowers_start_and_answer() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1)), T0 + 10, PROXY, UAS)
    t.feed(parse(request("INVITE", 1)), T0, UAC, PROXY)
    t.feed(parse(response(200, 1)), T0 + 2 * S + 10, PROXY, UAC)
    t.feed(parse(response(200, 1)), T0 + 2 * S, UAS, PROXY)
    r = only(t.feed(parse(request("BYE", 2, to_tag="callee-tag")), T0 + 9 * S, UAC, PROXY))
    assert (r.start, r.answer) == (T0, T0 + 2 * S)
    assert r.hops == (Hop(PROXY, UAS, None), Hop(UAC, PROXY, None))  # capture order


def test_provisionals_do_not_answer() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    for code in (100, 180, 183):
        w.up(response(code, 1), T0 + code * 1000)
    assert w.records == [] and len(w.tracker) == 1
    (active,) = w.tracker.active()
    assert active.answer is None and active.start == T0


def test_bye_from_the_callee_ends_the_call() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1), T0 + S)
    w.up(callee_request("BYE", 7), T0 + 61 * S)
    w.down(callee_response(200, 7, "BYE"), T0 + 61 * S + 100)
    r = only(w.records)
    assert r.end == T0 + 61 * S and r.billsec == 60


@pytest.mark.parametrize("challenge", [401, 407])
def test_auth_challenge_then_retry_is_the_same_call(challenge: int) -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(challenge, 1), T0 + 20_000)
    w.one(request("ACK", 1), T0 + 21_000, UAC, PROXY)
    w.down(request("INVITE", 2, headers=["Proxy-Authorization: Digest x"]), T0 + 40_000)
    w.up(response(180, 2), T0 + S)
    w.up(response(200, 2), T0 + 4 * S)
    w.down(request("BYE", 3, to_tag="callee-tag"), T0 + 14 * S)
    r = only(w.records)
    assert (r.start, r.answer, r.end) == (T0, T0 + 4 * S, T0 + 14 * S)
    assert r.billsec == 10 and w.tracker.stats.calls == 1


def test_challenge_never_retried_fails_with_the_challenge_code() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(407, 1), T0 + 20_000)
    assert w.tracker.expire(T0 + 20 * S) == []
    r = only(w.tracker.expire(T0 + 40 * S))
    assert (r.sip_code, r.disposition, r.end, r.answer) == (
        407, Disposition.FAILED, T0 + 20_000, None)


def test_cancel_then_487_is_cancelled() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(180, 1), T0 + S)
    w.down(request("CANCEL", 1), T0 + 8 * S)
    w.up(response(200, 1, "CANCEL"), T0 + 8 * S + 100)
    w.up(response(487, 1), T0 + 8 * S + 2000)
    r = only(w.records)
    assert (r.disposition, r.sip_code, r.answer, r.billsec) == (
        Disposition.CANCELLED, 487, None, 0)
    assert r.end == T0 + 8 * S + 2000  # the first copy of the 487, captured downstream


def test_2xx_crossing_the_cancel_is_answered() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(180, 1), T0 + S)
    w.up(response(200, 1), T0 + 5 * S)
    w.down(request("CANCEL", 1), T0 + 5 * S + 10)
    w.up(response(200, 1, "CANCEL"), T0 + 5 * S + 20)
    w.down(request("BYE", 2, to_tag="callee-tag"), T0 + 5 * S + 50_000)
    r = only(w.records)
    assert r.disposition is Disposition.ANSWERED and r.answer == T0 + 5 * S
    assert r.billsec == 1


@pytest.mark.parametrize(
    ("code", "disposition"),
    [
        (486, Disposition.BUSY),
        (600, Disposition.BUSY),
        (480, Disposition.NO_ANSWER),
        (408, Disposition.NO_ANSWER),
        (302, Disposition.FAILED),
        (404, Disposition.FAILED),
        (503, Disposition.FAILED),
    ],
)
def test_rejections_are_recorded_with_their_code(code: int, disposition: Disposition) -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(code, 1, headers=["Contact: <sip:elsewhere@10.9.9.9>"]), T0 + 2 * S)
    assert w.tracker.stats.records == 1  # emitted when the reply reaches the caller, not before
    r = only(w.records)
    assert (r.sip_code, r.disposition, r.billsec, r.end) == (code, disposition, 0, T0 + 2 * S)


def test_rejection_on_a_downstream_hop_waits_for_a_forked_answer() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.one(response(486, 1, to_tag="fork-a"), T0 + S, UAS, PROXY)  # branch A busy
    assert w.records == []
    w.up(response(200, 1, to_tag="fork-b"), T0 + 3 * S)  # branch B answers, proxy relays it
    w.down(request("BYE", 2, to_tag="fork-b"), T0 + 9 * S)
    r = only(w.records)
    assert r.disposition is Disposition.ANSWERED and r.billsec == 6


def test_rejection_seen_only_downstream_closes_at_setup_timeout() -> None:
    t = Tracker(setup_timeout_us=60 * S)
    t.feed(parse(request("INVITE", 1)), T0, UAC, PROXY)
    t.feed(parse(response(503, 1)), T0 + S, UAS, PROXY)  # the relay to UAC is not captured
    assert t.expire(T0 + 30 * S) == []
    r = only(t.expire(T0 + 62 * S))
    assert (r.sip_code, r.disposition, r.end) == (503, Disposition.FAILED, T0 + S)


def test_forked_2xx_first_answer_wins_and_other_fork_bye_does_not_end() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1, to_tag="fork-a"), T0 + 2 * S)
    w.up(response(200, 1, to_tag="fork-b"), T0 + 2 * S + 5000)
    # The UAC acks and hangs up the second fork at once (RFC 3261 §13.2.2.4).
    w.down(request("BYE", 2, to_tag="fork-b"), T0 + 2 * S + 9000)
    assert w.records == []
    w.down(request("BYE", 3, to_tag="fork-a"), T0 + 12 * S)
    r = only(w.records)
    assert r.answer == T0 + 2 * S and r.billsec == 10
    assert w.tracker.stats.forked_answers == 2 and w.tracker.stats.stray_bye == 2


def test_a_bye_that_arrives_before_its_answer_ends_the_call_when_the_answer_comes() -> None:
    # Two capture agents (an SBC and the proxy) whose copies arrive out of order: a call
    # answered and hung up within the gap showed its BYE first. It was a stray BYE, the 2xx then
    # confirmed the dialog, and the call ran to max_duration: 3 hours billed for 2 seconds.
    t = Tracker()
    t.feed(parse(request("INVITE", 1)), T0, UAC, PROXY)
    assert t.feed(parse(request("BYE", 2, to_tag="callee-tag")), T0 + 5 * S, UAC, PROXY) == []
    r = only(t.feed(parse(response(200, 1)), T0 + 3 * S, UAS, PROXY))
    assert (r.answer, r.end, r.billsec) == (T0 + 3 * S, T0 + 5 * S, 2)
    assert t.stats.stray_bye == 1 and len(t) == 0


def test_an_early_bye_from_the_callee_counts_too_and_never_before_the_answer() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1)), T0, UAC, PROXY)
    # The callee's BYE, stamped by an agent whose clock is 40 ms behind the other's.
    t.feed(parse(callee_request("BYE", 1)), T0 + 3 * S - 40_000, UAS, PROXY)
    r = only(t.feed(parse(response(200, 1)), T0 + 3 * S, UAS, PROXY))
    assert (r.answer, r.end, r.billsec) == (T0 + 3 * S, T0 + 3 * S, 0)


def test_an_early_bye_for_another_fork_does_not_end_the_answered_one() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1)), T0, UAC, PROXY)
    t.feed(parse(request("BYE", 2, to_tag="fork-b")), T0 + 3 * S, UAC, PROXY)
    assert t.feed(parse(response(200, 1, to_tag="fork-a")), T0 + 2 * S, UAS, PROXY) == []
    assert t.feed(parse(response(200, 1, to_tag="fork-b")), T0 + 2 * S + 10, UAS, PROXY) == []
    r = only(t.feed(parse(request("BYE", 3, to_tag="fork-a")), T0 + 9 * S, UAC, PROXY))
    assert (r.answer, r.billsec) == (T0 + 2 * S, 7)


def test_a_bye_stamped_before_the_answer_ends_at_the_answer() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1), T0 + 10 * S)
    w.one(request("BYE", 2, to_tag="callee-tag"), T0 + 9 * S, UAC, PROXY)  # clock stepped back
    r = only(w.records)
    assert (r.answer, r.end, r.billsec) == (T0 + 10 * S, T0 + 10 * S, 0)


def test_reinvite_and_update_are_no_new_calls_and_a_failed_one_does_not_end() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1), T0 + S)
    w.down(request("INVITE", 2, to_tag="callee-tag"), T0 + 10 * S)  # re-INVITE (hold)
    w.up(response(488, 2), T0 + 10 * S + 100)  # failed: the call goes on
    w.down(request("UPDATE", 3, to_tag="callee-tag"), T0 + 20 * S)
    w.up(response(200, 3, "UPDATE"), T0 + 20 * S + 100)
    w.up(callee_request("INVITE", 100), T0 + 30 * S)  # re-INVITE from the callee side
    w.down(callee_response(491, 100, "INVITE"), T0 + 30 * S + 100)
    assert w.records == [] and w.tracker.stats.calls == 1 and len(w.tracker) == 1
    w.down(request("BYE", 4, to_tag="callee-tag"), T0 + 40 * S)
    assert only(w.records).billsec == 39


@pytest.mark.parametrize("code", [481, 408])
def test_481_or_408_to_an_in_dialog_request_ends_the_call(code: int) -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1), T0 + S)
    w.down(request("INVITE", 2, to_tag="callee-tag"), T0 + 100 * S)
    w.up(response(code, 2), T0 + 100 * S + 700)
    r = only(w.records)
    assert r.end == T0 + 100 * S + 700 and r.flags == (f"ended_by_{code}",)
    assert r.disposition is Disposition.ANSWERED


def test_session_expires_without_refresh_closes_at_last_refresh_plus_interval() -> None:
    w = Wire()
    w.down(request("INVITE", 1, headers=["Session-Expires: 90", "Supported: timer"]), T0)
    w.up(response(200, 1, headers=["Session-Expires: 90;refresher=uac"]), T0 + S)
    w.down(request("UPDATE", 2, to_tag="callee-tag"), T0 + 46 * S)
    w.up(response(200, 2, "UPDATE", headers=["x: 120;refresher=uac"]), T0 + 46 * S + 10)
    assert w.tracker.expire(T0 + 100 * S) == []  # refreshed at 46 s with 120 s
    assert w.tracker.expire(T0 + 166 * S) == []
    r = only(w.tracker.expire(T0 + 167 * S))
    assert r.end == T0 + 46 * S + 10 + 120 * S and r.flags == ("session_expired",)
    assert r.answer == T0 + S and r.billsec == 166  # ceil(165.00001 s)


def test_max_duration_closes_an_answered_call_whose_bye_never_comes() -> None:
    w = Wire(tracker=Tracker(max_duration_us=3600 * S))
    w.answered_call()
    w.down(request("INVITE", 1, call_id="forever"), T0)
    w.up(response(200, 1, call_id="forever"), T0 + 2 * S)
    assert w.tracker.expire(T0 + 3601 * S) == []
    r = only(w.tracker.expire(T0 + 3602 * S))
    assert r.call_id == "forever" and r.end == T0 + 3602 * S and r.flags == ("max_duration",)
    assert r.billsec == 3600


def test_unanswered_call_without_final_reply_times_out() -> None:
    w = Wire(tracker=Tracker(setup_timeout_us=300 * S))
    w.down(request("INVITE", 1), T0)
    w.up(response(180, 1), T0 + S)
    assert w.tracker.expire(T0 + 300 * S) == []
    r = only(w.tracker.expire(T0 + 301 * S + RELAY))
    assert (r.disposition, r.sip_code, r.answer, r.end) == (
        Disposition.TIMEOUT, 408, None, T0 + S + RELAY)


def test_unknown_bye_and_in_dialog_requests_are_counted_not_crashed() -> None:
    t = Tracker()
    assert t.feed(parse(request("BYE", 2, to_tag="x")), T0, UAC, PROXY) == []
    assert t.feed(parse(request("INFO", 3, to_tag="x")), T0, UAC, PROXY) == []
    assert t.feed(parse(response(200, 2, "BYE")), T0, UAS, PROXY) == []
    assert t.feed(parse(request("OPTIONS", 1)), T0, UAC, PROXY) == []
    s = t.stats
    assert (s.unknown_bye, s.in_dialog_without_dialog, s.orphan_responses, s.ignored) == (
        1, 1, 1, 1)
    assert len(t) == 0


def test_b2bua_legs_with_one_correlation_id_are_one_call() -> None:
    w = Wire()
    a = dict(call_id="leg-a")
    b = dict(call_id="leg-b", from_tag="b2b-tag")
    w.one(request("INVITE", 1, **a), T0, UAC, PROXY, "corr-1")
    w.one(request("INVITE", 1, **b), T0 + 1000, PROXY, UAS, "corr-1")
    w.one(response(503, 1, **b), T0 + 2000, UAS, PROXY, "corr-1")  # B2BUA re-routes
    w.one(request("INVITE", 1, call_id="leg-c", from_tag="b2b-2"), T0 + 3000, PROXY,
          ("10.0.0.4", 5060), "corr-1")
    w.one(response(200, 1, call_id="leg-c", from_tag="b2b-2"), T0 + 2 * S,
          ("10.0.0.4", 5060), PROXY, "corr-1")
    w.one(response(200, 1, **a), T0 + 2 * S + 500, PROXY, UAC, "corr-1")
    assert w.records == [] and len(w.tracker) == 1
    w.one(request("BYE", 2, to_tag="callee-tag", **a), T0 + 12 * S, UAC, PROXY, "corr-1")
    r = only(w.records)
    assert r.call_id == "leg-a" and r.correlation_id == "corr-1"
    # Answered when the caller's leg got its 2xx (SPEC §4: the 2xx to the first INVITE), not
    # at the callee's 2xx on leg-c 500 µs before it.
    assert (r.start, r.answer, r.billsec) == (T0, T0 + 2 * S + 500, 10)
    assert len(r.hops) == 3
    # The other legs' late BYE/200 are absorbed, not a second call.
    w.one(request("BYE", 2, to_tag="callee-tag", call_id="leg-c", from_tag="b2b-2"),
          T0 + 12 * S + 100, PROXY, ("10.0.0.4", 5060), "corr-1")
    assert len(w.records) == 1


def test_b_leg_correlated_to_the_a_leg_call_id_is_joined() -> None:
    # heplify / HOMER style: only the B-leg carries a correlation id, the A-leg's Call-ID.
    t = Tracker()
    t.feed(parse(request("INVITE", 1, call_id="A")), T0, UAC, PROXY)
    t.feed(parse(request("INVITE", 1, call_id="B", from_tag="b")), T0 + 10, PROXY, UAS, None, "A")
    t.feed(parse(response(200, 1, call_id="B", from_tag="b")), T0 + S, UAS, PROXY, None, "A")
    t.feed(parse(response(200, 1, call_id="A")), T0 + S + 10, PROXY, UAC)
    assert len(t) == 1 and t.stats.b2bua_legs == 1
    (r,) = t.feed(parse(callee_request("BYE", 5, call_id="B", caller_tag="b")), T0 + 5 * S,
                  UAS, PROXY, None, "A")  # fmt: skip
    assert (r.call_id, r.answer, r.end, len(r.hops)) == ("A", T0 + S + 10, T0 + 5 * S, 2)
    assert not t._by_corr


def test_a_b_leg_answer_stands_in_when_the_first_legs_2xx_is_never_captured() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1, call_id="A")), T0, UAC, PROXY, None, "c")
    t.feed(parse(request("INVITE", 1, call_id="B", from_tag="b")), T0 + 10, PROXY, UAS, None, "c")
    t.feed(parse(response(200, 1, call_id="B", from_tag="b")), T0 + S, UAS, PROXY, None, "c")
    (r,) = t.feed(parse(request("BYE", 2, call_id="B", from_tag="b", to_tag="callee-tag")),
                  T0 + 5 * S, PROXY, UAS, None, "c")
    assert (r.answer, r.billsec) == (T0 + S, 4)


def test_the_first_legs_2xx_decides_even_when_captured_before_the_b_legs() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1, call_id="A")), T0, UAC, PROXY, None, "c")
    t.feed(parse(request("INVITE", 1, call_id="B", from_tag="b")), T0 + 10, PROXY, UAS, None, "c")
    t.feed(parse(response(200, 1, call_id="A")), T0 + S, PROXY, UAC, None, "c")
    t.feed(parse(response(200, 1, call_id="B", from_tag="b")), T0 + S - 5, UAS, PROXY, None, "c")
    (r,) = t.feed(parse(request("BYE", 2, call_id="A", to_tag="callee-tag")), T0 + 5 * S, UAC,
                  PROXY, None, "c")
    assert r.answer == T0 + S  # the B-leg's earlier 2xx, delivered later, does not move it


def test_same_call_id_other_from_tag_is_not_joined_by_correlation() -> None:
    t = Tracker()
    t.feed(parse(request("INVITE", 1, from_tag="t1")), T0, UAC, PROXY, None, "call-1@10.0.0.1")
    t.feed(parse(request("INVITE", 1, from_tag="t2")), T0, UAC, PROXY, None, "call-1@10.0.0.1")
    assert len(t) == 2


def test_a_reply_from_where_no_invite_went_adds_the_responder_hop() -> None:
    # SPEC §4: the responder identifies the client too. The proxy's INVITE went to a load
    # balancer (LB); the 200 comes back from the gateway itself (GW).
    lb, gw = ("10.99.0.1", 5060), ("10.20.0.12", 5060)
    w = Wire()
    w.one(request("INVITE", 1), T0, UAC, PROXY)
    w.one(request("INVITE", 1), T0 + RELAY, PROXY, lb)
    w.one(response(200, 1, phrase="OK"), T0 + S, gw, PROXY)
    w.one(response(200, 1, phrase="OK"), T0 + S + RELAY, PROXY, UAC)
    w.one(request("BYE", 2, to_tag="callee-tag"), T0 + 5 * S, UAC, PROXY)
    r = only(w.records)
    assert r.hops == (Hop(UAC, PROXY, 2001), Hop(PROXY, lb, 2001), Hop(PROXY, gw, 2001))


def test_replies_along_the_invite_path_add_no_hop() -> None:
    w = Wire()
    w.answered_call()
    w.down(request("INVITE", 1, call_id="busy-1"), T0)
    w.up(response(486, 1, phrase="Busy Here", call_id="busy-1"), T0 + S)
    assert [len(r.hops) for r in w.records] == [2, 2]


def test_hops_are_distinct_invite_copies_in_capture_order_with_capture_ids() -> None:
    t = Tracker()
    inv = parse(request("INVITE", 1))
    t.feed(inv, T0, UAC, PROXY, 1)
    t.feed(inv, T0 + 10, PROXY, UAS, 1)
    t.feed(inv, T0 + 20, UAC, PROXY, 1)  # retransmission: same hop
    t.feed(inv, T0 + 30, PROXY, UAS, 2)  # seen by another agent: same hop
    (a,) = t.active()
    assert a.hops == (Hop(UAC, PROXY, 1), Hop(PROXY, UAS, 1)) and a.capture_ids == (1, 2)


def test_active_paths_count_every_call_once_per_shared_path() -> None:
    t = Tracker()
    other = ("10.0.0.9", 5060)
    for n in range(50):
        inv = parse(request("INVITE", 1, call_id=f"via-proxy-{n}"))
        t.feed(inv, T0 + n, UAC, PROXY, 1)
        t.feed(inv, T0 + n + 10, PROXY, UAS, 1)
    for n in range(7):
        t.feed(parse(request("INVITE", 1, call_id=f"direct-{n}")), T0 + n, other, UAS, None)
    paths = t.active_paths()
    assert sum(p.calls for p in paths) == len(list(t.active())) == 57
    # Calls along one path share its tuples, so they fold into one entry each.
    assert {(p.hops, p.capture_ids): p.calls for p in paths} == {
        ((Hop(UAC, PROXY, 1), Hop(PROXY, UAS, 1)), (1,)): 50,
        ((Hop(other, UAS, None),), ()): 7,
    }
    assert len(paths) == 2
    per_call = Counter((a.hops, a.capture_ids) for a in t.active())
    assert per_call == Counter({(p.hops, p.capture_ids): p.calls for p in paths})


def test_copies_from_ever_new_addresses_or_agents_stop_growing_a_call_at_the_cap() -> None:
    t = Tracker()
    inv = parse(request("INVITE", 1))
    for i in range(MAX_HOPS + 10):
        t.feed(inv, T0 + i, (f"10.9.0.{i}", 5060), PROXY, 1)
    (a,) = t.active()
    assert len(a.hops) == MAX_HOPS and a.hops[-1].src == (f"10.9.0.{MAX_HOPS - 1}", 5060)
    assert t.stats.duplicates == 10
    for i in range(MAX_HOPS + 10):
        t.feed(inv, T0 + 100 + i, UAC, PROXY, 1000 + i)
    (a,) = t.active()
    assert a.capture_ids == (1, *range(1000, 1000 + MAX_HOPS - 1))


def test_finished_dialogs_absorb_late_copies_then_are_dropped() -> None:
    w = Wire()
    w.answered_call()
    end = w.records[0].end
    w.down(request("BYE", 2, to_tag="callee-tag"), end + S)  # late retransmission
    assert len(w.records) == 1 and w.tracker.stats.late == 5  # 200, 2 BYE, 2 late BYE
    w.tracker.expire(end + 10 * S)
    assert w.tracker._dialogs  # still lingering
    w.tracker.expire(end + 40 * S)
    assert not w.tracker._dialogs and not w.tracker._linger and not w.tracker._active


def test_memory_is_bounded_under_many_calls() -> None:
    w = Wire()
    for i in range(200):
        ts = T0 + i * S
        cid = f"c{i}"
        w.down(request("INVITE", 1, call_id=cid), ts)
        w.up(response(200, 1, call_id=cid), ts + 100)
        w.down(request("BYE", 2, call_id=cid, to_tag="callee-tag"), ts + 200)
        w.tracker.expire(ts)
    assert len(w.records) == 200
    assert len(w.tracker._dialogs) <= 40  # only the last linger window's worth


def test_flood_beyond_max_active_is_refused_and_counted() -> None:
    t = Tracker(max_active=3)
    for i in range(5):
        t.feed(parse(request("INVITE", 1, call_id=f"f{i}")), T0, UAC, PROXY)
    assert len(t) == 3 and t.stats.overflow == 2


def test_state_round_trip_bills_once_with_the_true_answer_time() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1, headers=["Session-Expires: 1800"]), T0 + 2 * S)
    w.down(request("INVITE", 1, call_id="ringing"), T0 + 3 * S)
    w.up(response(407, 1, call_id="other"), T0)  # orphan, counted
    w.answered_call()  # call-1 is the first one; this feeds late copies only
    state = w.tracker.export_state()
    restored = Tracker.restore_state(state)
    assert restored.export_state() == state
    assert len(restored) == len(w.tracker) == 1
    w2 = Wire(tracker=restored)
    w2.up(response(200, 1, call_id="ringing"), T0 + 9 * S)
    w2.down(request("BYE", 2, call_id="ringing", to_tag="callee-tag"), T0 + 19 * S)
    r = only(w2.records)
    assert (r.call_id, r.start, r.answer, r.billsec) == ("ringing", T0 + 3 * S, T0 + 9 * S, 10)
    assert restored.stats.orphan_responses == 2  # both copies of the stray 407
    assert r.hops == (Hop(UAC, PROXY, 2001), Hop(PROXY, UAS, 2001))


def test_restore_keeps_lingering_dialogs_so_late_copies_are_not_new_calls() -> None:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(486, 1), T0 + S)
    restored = Tracker.restore_state(w.tracker.export_state())
    assert restored.feed(parse(request("INVITE", 1)), T0 + 2 * S, UAC, PROXY) == []
    assert len(restored) == 0 and restored.stats.late == 1


# Written by the format 1 exporter (every build up to 646ba3d's) for: call-1 answered with
# Session-Expires 1800, "ringing" still ringing, "busy" rejected with 486 (lingering).
FORMAT_1 = (
    b'{"format":"vmgated.sip.dialog","version":1,"calls":[{"call_id":"call-1@10.0.0.1",'
    b'"from_tag":"caller-tag","caller":"+15551230000","callee":"+37410123456",'
    b'"start":1700000000000000,"answer":1700000002000000,"code":200,"cancelled":false,'
    b'"correlation_id":null,"hops":[["10.0.0.1",5060,"10.0.0.2",5060,2001],["10.0.0.2",5060,'
    b'"10.0.0.3",5060,2001]],"capture_ids":[2001],"last_ts":1700000002000300,'
    b'"refresh_ts":1700000002000000,"refresh_cseq":-1,"session_expires":1800,"legs":[{"key":'
    b'["call-1@10.0.0.1","caller-tag"],"state":"CONFIRMED","invite_cseq":1,"to_tag":'
    b'"callee-tag","origin":["10.0.0.1",5060],"reject_code":0,"reject_ts":0}]},{"call_id":'
    b'"ringing","from_tag":"caller-tag","caller":"+15551230000","callee":"+37410123456",'
    b'"start":1700000003000000,"answer":null,"code":0,"cancelled":false,"correlation_id":'
    b'null,"hops":[["10.0.0.1",5060,"10.0.0.2",5060,2001],["10.0.0.2",5060,"10.0.0.3",5060,'
    b'2001]],"capture_ids":[2001],"last_ts":1700000003000300,"refresh_ts":0,"refresh_cseq":'
    b'-1,"session_expires":null,"legs":[{"key":["ringing","caller-tag"],"state":"TRYING",'
    b'"invite_cseq":1,"to_tag":null,"origin":["10.0.0.1",5060],"reject_code":0,'
    b'"reject_ts":0}]}],"lingering":[["busy","caller-tag",1700000005000300]],"stats":'
    b'{"calls":3,"records":1,"duplicates":1,"late":0,"unknown_bye":0,'
    b'"in_dialog_without_dialog":0,"orphan_responses":0,"forked_answers":0,"stray_bye":0,'
    b'"b2bua_legs":0,"overflow":0,"ignored":0}}'
)


def format_1_scenario() -> Wire:
    w = Wire()
    w.down(request("INVITE", 1), T0)
    w.up(response(200, 1, headers=["Session-Expires: 1800"]), T0 + 2 * S)
    w.down(request("INVITE", 1, call_id="ringing"), T0 + 3 * S)
    w.down(request("INVITE", 1, call_id="busy"), T0 + 4 * S)
    w.up(response(486, 1, call_id="busy"), T0 + 5 * S)
    return w


def test_a_snapshot_written_before_the_upgrade_restores_as_the_same_state() -> None:
    restored = Tracker.restore_state(FORMAT_1)
    assert restored.export_state() == format_1_scenario().tracker.export_state()
    assert STATE_FORMAT == 3
    w = Wire(tracker=restored)
    w.down(request("BYE", 2, to_tag="callee-tag"), T0 + 62 * S)
    r = only(w.records)
    assert (r.call_id, r.answer, r.billsec) == ("call-1@10.0.0.1", T0 + 2 * S, 60)
    assert restored.feed(parse(request("INVITE", 1, call_id="busy")), T0 + 6 * S, UAC, PROXY) == []


def test_a_format_2_snapshot_restores_with_no_clock_offset() -> None:
    w = format_1_scenario()
    doc = json.loads(w.tracker.export_state())
    assert doc["version"] == 3 and all(row[-1] == 0 for row in doc["calls"])
    doc["version"] = 2
    doc["calls"] = [row[:-1] for row in doc["calls"]]  # format 2 had no offset after the legs
    restored = Tracker.restore_state(json.dumps(doc).encode())
    assert restored.export_state() == w.tracker.export_state()


HOURS_4 = 4 * 3600 * S


def _fed(tracker: Tracker, raw: bytes, ts: int, skew: int) -> list[CallRecord]:
    """Feed one message captured at `ts` (the agent's clock) and received at ts + skew."""
    return tracker.feed(parse(raw), ts, UAC, UAS, None, None, received_us=ts + skew)


@pytest.mark.parametrize("skew", [HOURS_4, -HOURS_4, 0])
def test_each_call_is_expired_on_its_own_capture_clock(skew: int) -> None:
    # An agent 4 h behind used to have every answered call closed at the next tick as
    # max_duration (billed 1 h here, 3 h by default) and every ringing call as a timeout.
    t = Tracker(max_duration_us=3600 * S)
    assert _fed(t, request("INVITE", 1), T0, skew) == []
    assert _fed(t, response(200, 1), T0 + 2 * S, skew) == []
    assert _fed(t, request("INVITE", 1, call_id="ringing"), T0 + 5 * S, skew) == []
    wall = T0 + skew  # our clock when the agent's says T0
    assert t.expire(wall + 60 * S) == []  # a minute in: nothing is overdue on either clock
    timed_out = only(t.expire(wall + 5 * S + 300 * S))  # the ringing call's setup timeout
    assert (timed_out.call_id, timed_out.flags) == ("ringing", ("setup_timeout",))
    assert t.expire(wall + 2 * S + 3599 * S) == []
    closed = only(t.expire(wall + 2 * S + 3600 * S))
    assert closed.flags == ("max_duration",) and closed.billsec == 3600


def test_a_skewed_call_ends_at_its_bye_with_its_own_times_and_lingers_on_our_clock() -> None:
    t = Tracker(max_duration_us=3600 * S)
    _fed(t, request("INVITE", 1), T0, -HOURS_4)
    _fed(t, response(200, 1), T0 + 2 * S, -HOURS_4)
    assert t.expire(T0 - HOURS_4 + 30 * S) == []
    r = only(_fed(t, request("BYE", 2, to_tag="callee-tag"), T0 + 62 * S, -HOURS_4))
    assert (r.start, r.answer, r.end, r.billsec) == (T0, T0 + 2 * S, T0 + 62 * S, 60)
    # A late copy of the BYE is absorbed for linger_us of *our* time, then forgotten.
    t.expire(T0 - HOURS_4 + 62 * S + t.linger_us - S)
    assert _fed(t, request("BYE", 2, to_tag="callee-tag"), T0 + 63 * S, -HOURS_4) == []
    assert t.stats.late == 1


def test_the_clock_offset_survives_a_snapshot() -> None:
    t = Tracker(max_duration_us=3600 * S)
    _fed(t, request("INVITE", 1), T0, HOURS_4)
    _fed(t, response(200, 1), T0 + 2 * S, HOURS_4)
    restored = Tracker.restore_state(t.export_state(), max_duration_us=3600 * S)
    assert restored.expire(T0 + HOURS_4 + 3601 * S) == []
    assert only(restored.expire(T0 + HOURS_4 + 3602 * S)).billsec == 3600


def test_a_capture_is_the_state_at_that_moment_whatever_is_fed_after() -> None:
    w = format_1_scenario()
    before = w.tracker.export_state()
    captured = w.tracker.capture()
    w.up(response(200, 1, call_id="ringing"), T0 + 9 * S)  # the loop goes on while it is written
    w.down(request("BYE", 2, to_tag="callee-tag"), T0 + 70 * S)
    assert [r.call_id for r in w.records] == ["busy", "call-1@10.0.0.1"]
    assert b"".join(encode_state(captured)) == before
    assert len(Tracker.restore_state(before)) == 2


def test_state_is_encoded_in_pieces_that_join_to_one_document() -> None:
    w = Wire()
    for i in range(4_500):  # more than two pieces of 2,000 calls
        w.down(request("INVITE", 1, call_id=f"many-{i}"), T0 + i)
    pieces = list(encode_state(w.tracker.capture()))
    # head, lingering "[" "]", ',"calls":', "[", three pieces of calls, "]", "}"
    assert len(pieces) == 10
    blob = b"".join(pieces)
    assert blob == w.tracker.export_state()
    restored = Tracker.restore_state(blob)
    assert len(restored) == 4_500
    assert restored.export_state() == blob


def test_restore_reads_a_state_whose_members_come_in_another_order() -> None:
    w = Wire()
    w.down(request("INVITE", 1, call_id="reordered"), T0)
    doc = json.loads(w.tracker.export_state())
    moved = {"calls": doc.pop("calls"), "lingering": doc.pop("lingering"), **doc}
    restored = Tracker.restore_state(json.dumps(moved).encode())
    assert restored.export_state() == w.tracker.export_state()


@pytest.mark.parametrize(
    "blob",
    [b"", b"{}", b"[]", b'{"format":"vmgated.sip.dialog","version":99}',
     b'{"format":"vmgated.sip.dialog","version":1,"calls":[{"call_id":1}]}', b"\xff",
     b'{"format":"vmgated.sip.dialog","version":2,"calls":{},"lingering":[],"stats":{}}',
     b'{"calls":[[1]],"format":"vmgated.sip.dialog","version":2,"lingering":[],"stats":{}}',
     b'{"format":"vmgated.sip.dialog","version":2,"calls":[],"lingering":[]}'],
)
def test_restore_refuses_what_it_did_not_write(blob: bytes) -> None:
    with pytest.raises(StateError):
        Tracker.restore_state(blob)


def test_every_transition_leaves_the_ended_state_alone() -> None:
    assert not any(state is State.ENDED for state, _ in TRANSITIONS)
    assert all(nxt in State for nxt, _ in TRANSITIONS.values())


# -- property: any interleaving of a call's packets bills it at most once ------------------

_POOL = [
    (request("INVITE", 1), UAC, PROXY),
    (request("INVITE", 1), PROXY, UAS),
    (response(100, 1), PROXY, UAC),
    (response(180, 1), UAS, PROXY),
    (response(407, 1), UAS, PROXY),
    (request("INVITE", 2), UAC, PROXY),
    (response(200, 2), UAS, PROXY),
    (response(200, 1), UAS, PROXY),
    (response(200, 1, to_tag="fork"), UAS, PROXY),
    (response(486, 1), PROXY, UAC),
    (response(487, 1), UAS, PROXY),
    (request("CANCEL", 1), UAC, PROXY),
    (request("ACK", 1, to_tag="callee-tag"), UAC, PROXY),
    (request("BYE", 2, to_tag="callee-tag"), UAC, PROXY),
    (request("BYE", 3, to_tag="callee-tag"), UAC, PROXY),
    (callee_request("BYE", 9), UAS, PROXY),
    (request("INVITE", 3, to_tag="callee-tag"), UAC, PROXY),
    (response(481, 3), UAS, PROXY),
    (response(200, 3, headers=["Session-Expires: 90"]), UAS, PROXY),
    (request("INVITE", 1, call_id="other-leg", from_tag="b"), PROXY, UAS),
]
_PARSED = [(parse(raw), src, dst) for raw, src, dst in _POOL]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_POOL) - 1), st.integers(0, 10 * S)), max_size=30),
    st.booleans(),
)
def test_any_sequence_bills_each_call_at_most_once(
    steps: list[tuple[int, int]], corr: bool
) -> None:
    t = Tracker(max_duration_us=60 * S, setup_timeout_us=20 * S)
    out: list[CallRecord] = []
    now = T0
    for idx, dt in steps:
        now += dt
        msg, src, dst = _PARSED[idx]
        out += t.feed(msg, now, src, dst, 1, "corr" if corr else None)
        restored = Tracker.restore_state(t.export_state(), max_duration_us=60 * S,
                                         setup_timeout_us=20 * S)  # fmt: skip
        assert len(restored) == len(t)
    out += t.expire(now + 3600 * S)
    out += t.expire(now + 7200 * S)
    keys = [(r.call_id, r.from_tag) for r in out]
    assert len(keys) == len(set(keys))
    for r in out:
        assert r.start <= r.end
        assert r.answer is None or r.start <= r.answer
        assert (r.answer is not None) == (r.disposition is Disposition.ANSWERED)
    assert len(t) == 0 and not t._dialogs


@given(
    st.lists(
        st.tuples(st.integers(0, len(_POOL) - 1), st.integers(0, 10 * S), st.booleans()),
        max_size=30,
    ),
    st.integers(-10 * 86_400 * S, 10 * 86_400 * S),
)
def test_a_constant_clock_offset_changes_no_record(
    steps: list[tuple[int, int, bool]], skew: int
) -> None:
    """Fed with receive times `skew` off the capture times, and expired on that clock, the
    tracker closes the same calls at the same moments with the same records as without."""
    plain = Tracker(max_duration_us=60 * S, setup_timeout_us=20 * S)
    skewed = Tracker(max_duration_us=60 * S, setup_timeout_us=20 * S)
    now = T0
    for idx, dt, tick in steps:
        now += dt
        msg, src, dst = _PARSED[idx]
        a = plain.feed(msg, now, src, dst, 1, None)
        b = skewed.feed(msg, now, src, dst, 1, None, received_us=now + skew)
        assert a == b
        if tick:
            assert plain.expire(now) == skewed.expire(now + skew)
    assert plain.expire(now + 3600 * S) == skewed.expire(now + 3600 * S + skew)
    assert len(skewed) == 0
