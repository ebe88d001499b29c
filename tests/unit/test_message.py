"""RFC 3261 §7 framing as billing needs it: the right fields, any spelling, one typed error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipbuild import request, response

from sip import message
from sip.message import SipError, SipMessage, parse, uri_user

INVITE = (
    b"INVITE sip:+37410123456@gw.example;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-top;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-second\r\n"
    b"Record-Route: <sip:10.0.0.2;lr>\r\n"
    b'From: "Alice \\"A\\" <x>" <sip:alice:secret@10.0.0.1>;tag=a1b2\r\n'
    b"To: <sip:+37410123456@gw.example>\r\n"
    b"Call-ID: 8f3e@10.0.0.1\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Min-SE: 90\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_request_fields() -> None:
    m = parse(INVITE)
    assert (m.method, m.status, m.is_request) == ("INVITE", 0, True)
    assert (m.ruri_user, m.from_user, m.from_tag, m.to_user, m.to_tag) == (
        "+37410123456", "alice", "a1b2", "+37410123456", None)
    assert (m.call_id, m.cseq_num, m.cseq_method) == ("8f3e@10.0.0.1", 314159, "INVITE")
    assert m.via_branch == "z9hG4bK-top"
    assert (m.session_expires, m.min_se, m.has_record_route) == (1800, 90, True)
    assert (m.content_length, m.body) == (4, b"v=0\n")


def test_response_fields() -> None:
    raw = response(486, 2, "INVITE", phrase="Busy Here",
                   headers=["Reason: Q.850;cause=17;text=\"User busy\""])  # fmt: skip
    m = parse(raw)
    assert (m.method, m.status, m.phrase, m.is_request, m.ruri_user) == (
        None, 486, "Busy Here", False, None)
    assert (m.to_tag, m.from_tag, m.cseq_num, m.cseq_method) == ("callee-tag", "caller-tag", 2,
                                                                 "INVITE")  # fmt: skip
    assert m.reason == 'Q.850;cause=17;text="User busy"'
    assert not m.has_record_route


def test_compact_forms_case_and_bare_lf() -> None:
    raw = (
        b"BYE sip:bob@h SIP/2.0\n"
        b"v: SIP/2.0/UDP h;BRANCH=z9hG4bKx\n"
        b"f: <sip:alice@h>;TAG=t1\n"
        b"T: sip:bob@h ; tag = t2\n"
        b"I: cid-1\n"
        b"cseq: 7 BYE\n"
        b"x: 90\n"
        b"L: 0\n"
        b"\n"
    )
    m = parse(raw)
    assert (m.method, m.from_tag, m.to_tag, m.call_id, m.cseq_num) == ("BYE", "t1", "t2",
                                                                      "cid-1", 7)  # fmt: skip
    assert (m.via_branch, m.session_expires, m.content_length) == ("z9hG4bKx", 90, 0)


def test_folded_header_lines_are_joined() -> None:
    raw = (b"BYE sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bKfold\r\n"
           b"From: <sip:alice@h>\r\n\t;tag=ft\r\nTo: <sip:bob@h>;tag=tt\r\nCall-ID:\r\n  c-9\r\n"
           b"CSeq: 2 BYE\r\n\r\n")  # fmt: skip
    m = parse(raw)
    assert (m.via_branch, m.from_tag, m.call_id) == ("z9hG4bKfold", "ft", "c-9")


def test_comma_joined_via_takes_the_top_one() -> None:
    via = b"Via: SIP/2.0/UDP a;branch=z9hG4bKa , SIP/2.0/UDP b;branch=b"
    raw = request("BYE", 2, to_tag="x").replace(
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-bye-2", via
    )
    assert parse(raw).via_branch == "z9hG4bKa"


def test_repeated_single_headers_keep_the_first() -> None:
    raw = request("INVITE", 1).replace(b"Call-ID: call-1@10.0.0.1\r\n",
                                       b"Call-ID: first\r\ni: second\r\n")  # fmt: skip
    assert parse(raw).call_id == "first"


def test_missing_body_and_missing_blank_line() -> None:
    m = parse(b"ACK sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\n"
              b"Call-ID: c\r\nCSeq: 1 ACK")  # fmt: skip
    assert (m.method, m.body, m.content_length) == ("ACK", b"", None)


def test_tel_uri_and_uri_without_user() -> None:
    assert uri_user(b"tel:+15551234;phone-context=x") == "+15551234"
    assert uri_user(b"sip:gw.example") == ""
    assert uri_user(b"sips:bob@h;transport=tls") == "bob"
    assert uri_user(b"SIP:Bob@h") == "Bob"


def test_header_names_that_only_start_like_a_wanted_one_are_ignored() -> None:
    raw = request("INVITE", 1, headers=["Call-Info: <x>", "Tox: 1", "Via-Foo: 2",
                                         "From-Change: y"])  # fmt: skip
    m = parse(raw)
    assert m.call_id == "call-1@10.0.0.1" and m.from_tag == "caller-tag"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage", "bad_start_line"),
        (b"INVITE sip:x SIP/3.0\r\n\r\n", "bad_start_line"),
        (b"INVITE  SIP/2.0\r\n\r\n", "bad_start_line"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "bad_start_line"),
        (b"SIP/2.0 099 Odd\r\n\r\n", "bad_status"),
        (b"SIP/2.0 200 OK\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\n\r\n", "no_call_id"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nTo: b\r\nCSeq: 1 INVITE\r\n\r\n", "no_from"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nCSeq: 1 INVITE\r\n\r\n", "no_to"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\n\r\n", "no_cseq"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: x INVITE\r\n\r\n",
         "bad_cseq"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 99999999999 INVITE\r\n\r\n",
         "bad_cseq"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 4294967295 INVITE\r\n\r\n",
         "bad_cseq"),
        (b"BYE sip:b SIP/2.0\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\n\r\n",
         "bad_cseq"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\nl: -1\r\n\r\n",
         "bad_content_length"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\nl: 1_0\r\n\r\n",
         "bad_content_length"),
        (b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\nl: 10\r\n\r\nab",
         "short_body"),
        (b"INVITE sip:x SIP/2.0\r\n" + b"X: " + b"a" * 70_000, "oversized"),
    ],
)
def test_malformed_messages_raise_sip_error_with_reason(raw: bytes, why: str) -> None:
    with pytest.raises(SipError) as exc:
        parse(raw)
    assert exc.value.reason == why


def test_malformed_optional_headers_read_as_none() -> None:
    m = parse(b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\n"
              b"x: soon\r\nMin-SE: " + b"9" * 5000 + b"\r\nVia: SIP/2.0/UDP h\r\n\r\n")  # fmt: skip
    assert (m.session_expires, m.min_se, m.via_branch, m.reason) == (None, None, None, None)


def test_any_spelling_falls_back_to_the_full_scan() -> None:
    raw = request("BYE", 5, to_tag="t").replace(b"Call-ID:", b"CALL-ID:").replace(
        b"Content-Length: 0", b"content-length: x")
    with pytest.raises(SipError) as exc:
        parse(raw)
    assert exc.value.reason == "bad_content_length"
    assert parse(raw.replace(b"length: x", b"length: 0")).call_id == "call-1@10.0.0.1"


def test_longer_body_than_content_length_is_cut() -> None:
    m = parse(b"SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: a\r\nTo: b\r\nCSeq: 1 INVITE\r\n"
              b"Content-Length: 2\r\n\r\nabcdef")  # fmt: skip
    assert m.body == b"ab"


def test_message_is_immutable() -> None:
    m = parse(INVITE)
    with pytest.raises(AttributeError):
        m.call_id = "x"  # type: ignore[misc]
    assert isinstance(m, SipMessage) and not hasattr(m, "__dict__")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_sip_error(data: bytes) -> None:
    for candidate in (data, b"INVITE sip:a@b SIP/2.0\r\n" + data, b"SIP/2.0 200 OK\n" + data):
        with contextlib.suppress(SipError):
            parse(candidate)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(
        [0, 9, 10, 13, 32, 34, 44, 58, 59, 60, 61, 62, 64, 0x80, 0xFF, ord("0"), ord("a")])),
        min_size=1, max_size=8),
    st.booleans(),
)  # fmt: skip
def test_mutated_messages_raise_only_sip_error(
    flips: list[tuple[int, int]], cut: bool
) -> None:
    buf = bytearray(INVITE)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    data = bytes(buf[: flips[0][0] % len(buf)]) if cut else bytes(buf)
    try:
        m = parse(data)
    except SipError:
        return
    # Whatever parses must be usable by the tracker without further errors.
    assert isinstance(m.call_id, str) and m.cseq_num >= 0
    _ = (m.ruri_user, m.from_user, m.to_user)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(_token, _token, _token, st.integers(0, 2**31 - 1), st.sampled_from([b"\r\n", b"\n"]))
def test_generated_requests_parse_back(call_id: str, tag: str, user: str, cseq: int,
                                       eol: bytes) -> None:  # fmt: skip
    raw = request("INVITE", cseq, call_id=call_id, from_tag=tag, caller=user, eol=eol,
                  body=b"v=0\r\n")  # fmt: skip
    m = parse(raw)
    assert (m.call_id, m.from_tag, m.from_user, m.cseq_num, m.body) == (
        call_id, tag, user, cseq, b"v=0\r\n")


def _general(data: bytes) -> SipMessage | str:
    """What `parse` gives with its one-match fast path switched off (or the error's reason)."""
    saved = message._common_layout
    message._common_layout = lambda _data: None  # type: ignore[assignment]
    try:
        return parse(data)
    except SipError as exc:
        return exc.reason
    finally:
        message._common_layout = saved


def _parsed(data: bytes) -> SipMessage | str:
    try:
        return parse(data)
    except SipError as exc:
        return exc.reason


# The fast path's layout (From … To … Call-ID … CSeq … Content-Length, CRLF), one message with
# SIP-looking trouble in it, and the general path's own cases (RFC 3261 order, compact forms).
_LAYOUT = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=f\r\n"
    b"Contact: <sip:b@h>\r\nTo: <sip:b@h>;tag=t\r\nCall-ID: c@h\r\nCSeq: 7 INVITE\r\n"
    b"Session-Expires: 90\r\nContent-Length: 3\r\nX: y\r\n\r\nabc"
)
_SAMPLES = (INVITE, _LAYOUT, request("INVITE", 1, body=b"v=0\r\n"), response(200, 1))


def test_common_layout_takes_the_fast_path() -> None:
    # Not just the fallback every time: the sample messages are the layout the match is for.
    assert message._common_layout(_LAYOUT) is not None
    assert message._common_layout(request("BYE", 2, to_tag="t")) is not None
    assert message._common_layout(INVITE.replace(b"\r\n", b"\n")) is None
    m = parse(_LAYOUT)
    assert (m.from_tag, m.to_tag, m.call_id, m.cseq_num, m.content_length, m.body) == (
        "f", "t", "c@h", 7, 3, b"abc")


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2000), st.integers(-1, 1), st.sampled_from(
        [b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x0b", b":", b"", b"\r\n\r\n", b"\n\n",
         b"\r\nFrom: x", b"\r\nTo: y;tag=2", b"\r\nCall-ID: z", b"\r\nCSeq: 9 BYE",
         b"\r\nContent-Length: 1", b"\r\n ", b"A", b"f", b"l"])),
        min_size=1, max_size=6),
    st.sampled_from([0, 1]),
)  # fmt: skip
def test_fast_path_agrees_with_the_general_path(
    sample: bytes, edits: list[tuple[bool, int, int, bytes]], width: int
) -> None:
    # Each edit replaces `width` bytes (0: inserts) with SIP-shaped bytes (line ends, empty
    # lines, folds, whitespace, duplicate and reordered headers), anywhere or next to a colon,
    # CR or LF, where the layout's edges are.
    data = sample
    for anchored, k, offset, text in edits:
        marks = [i for i, c in enumerate(data) if c in b":\r\n"] if anchored else []
        at = marks[k % len(marks)] + 1 + offset if marks else k % (len(data) + 1)
        data = data[:at] + text + data[at + width :]
    assert _parsed(data) == _general(data)


@pytest.mark.parametrize("ws", [b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"  \t"])
@pytest.mark.parametrize("name", [b"From", b"To", b"Call-ID", b"CSeq", b"Content-Length"])
def test_fast_path_strips_values_as_the_general_path(name: bytes, ws: bytes) -> None:
    # Every ASCII whitespace byte, before and after each of the five values.
    line = _LAYOUT.index(b"\n" + name + b":") + len(name) + 2
    end = _LAYOUT.index(b"\r\n", line)
    for data in (_LAYOUT[:line] + ws + _LAYOUT[line:],
                 _LAYOUT[:end] + ws + _LAYOUT[end:]):  # fmt: skip
        fast, general = parse(data), _general(data)
        assert fast == general
        assert fast[3:12] == parse(_LAYOUT)[3:12]  # from_hdr … content_length: stripped
