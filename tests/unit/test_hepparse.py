"""HEP datagrams → parsed messages and notices: the step the ingest process runs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sipbuild import request

from sip import hep, message
from sip.message import SipMessage
from vmgated import hepparse
from vmgated.hepparse import INTERNAL_ERROR, Refused, Skewed, parse_batch, stamp_batch

PROXY = ("127.0.0.1", 9060)
SRC, DST = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
T = 1_700_000_000_000_000


def dgram(payload: bytes = b"", **kw: object) -> bytes:
    return hep.encode(payload or request("INVITE", 1), SRC, DST, T, capture_id=7, **kw)  # type: ignore[arg-type]


def test_messages_come_out_in_order_with_their_envelope() -> None:
    a, b = request("INVITE", 1, call_id="a"), request("BYE", 2, call_id="b")
    parsed, notices = parse_batch([(dgram(a), PROXY), (dgram(b), PROXY)], None, 0)
    assert notices == []
    assert [p[0].call_id for p in parsed] == ["a", "b"]
    assert parsed[0] == (message.parse(a), T, SRC, DST, 7, None)


def test_each_refusal_has_its_reason_and_sender() -> None:
    batch = [
        (b"\x00junk", ("10.9.9.9", 1)),
        (dgram(auth_key=b"wrong"), PROXY),
        (dgram(), PROXY),  # no key at all
        (dgram(proto_type=5, auth_key=b"k"), PROXY),
        (dgram(b"NOT SIP AT ALL\r\n\r\n", auth_key=b"k"), PROXY),
        (dgram(auth_key=b"k"), PROXY),
    ]
    parsed, notices = parse_batch(batch, b"k", 0)
    assert len(parsed) == 1
    reasons = [(n.reason, n.sender) for n in notices if isinstance(n, Refused)]
    assert reasons[1:4] == [("auth", PROXY), ("auth", PROXY), ("not_sip", PROXY)]
    assert reasons[0][1] == ("10.9.9.9", 1) and reasons[4][0].startswith("sip_")
    assert len(notices) == 5


def test_a_capture_clock_far_from_ours_is_noticed_and_the_message_still_read() -> None:
    parsed, notices = parse_batch([(dgram(), PROXY)], None, T + hepparse.SKEW_WARN_US + 1)
    assert len(parsed) == 1 and notices == [Skewed(hepparse.SKEW_WARN_US + 1, PROXY, 7)]
    assert parse_batch([(dgram(), PROXY)], None, T + hepparse.SKEW_WARN_US - 1)[1] == []


def test_a_datagram_that_hits_a_bug_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    real = message.parse

    def parse(data: bytes) -> SipMessage:
        if b"boom" in data:
            raise KeyError("a bug")
        return real(data)

    monkeypatch.setattr(message, "parse", parse)
    batch = [(dgram(request("INVITE", 1, call_id="boom")), PROXY), (dgram(), PROXY)]
    parsed, notices = parse_batch(batch, None, 0)
    assert len(parsed) == 1
    (refused,) = notices
    assert isinstance(refused, Refused) and refused.reason == INTERNAL_ERROR
    assert "KeyError: 'a bug'" in refused.detail  # the traceback, for the daemon's log


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_any_bytes_give_exactly_one_outcome_each_and_never_raise(data: list[bytes]) -> None:
    batch = [(d, PROXY) for d in data]
    parsed, notices = parse_batch(batch, None, 0)
    assert len(parsed) + sum(isinstance(n, Refused) for n in notices) == len(batch)


def test_hepv1_is_stamped_with_the_arrival_time_before_it_is_journalled() -> None:
    v1 = hep.encode(request("INVITE", 1), SRC, DST, 0, version=1)
    batch = [(v1, PROXY), (dgram(), PROXY)]
    stamp_batch(batch, T + 5)
    assert hep.decode(batch[0][0]).ts_us == T + 5 and batch[1][0] == dgram()
