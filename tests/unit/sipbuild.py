"""Builders of real SIP bytes for the sip/ tests: one place that knows what a message looks like.

Not a test module (no ``test_`` prefix): imported by test_dialog, test_message, test_capture and
test_sip_kamailio.
"""

from __future__ import annotations

from collections.abc import Iterable

from sip.call import Addr

UAC: Addr = ("10.0.0.1", 5060)
PROXY: Addr = ("10.0.0.2", 5060)
UAS: Addr = ("10.0.0.3", 5060)


def request(
    method: str,
    cseq: int,
    *,
    call_id: str = "call-1@10.0.0.1",
    from_tag: str | None = "caller-tag",
    to_tag: str | None = None,
    ruri: str = "sip:+37410123456@10.0.0.3",
    caller: str = "+15551230000",
    cseq_method: str | None = None,
    headers: Iterable[str] = (),
    body: bytes = b"",
    eol: bytes = b"\r\n",
) -> bytes:
    """A request as a UA would send it (From = caller unless given otherwise)."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-{method.lower()}-{cseq}",
        "Max-Forwards: 70",
        f"From: \"Caller\" <sip:{caller}@10.0.0.1>" + (f";tag={from_tag}" if from_tag else ""),
        f"To: <{ruri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:caller@10.0.0.1:5060>",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return eol.join(x.encode() for x in lines) + eol + eol + body


def response(
    status: int,
    cseq: int,
    method: str = "INVITE",
    *,
    call_id: str = "call-1@10.0.0.1",
    from_tag: str | None = "caller-tag",
    to_tag: str | None = "callee-tag",
    caller: str = "+15551230000",
    callee_uri: str = "sip:+37410123456@10.0.0.3",
    phrase: str = "Whatever",
    headers: Iterable[str] = (),
) -> bytes:
    """A response to a caller-side request (From/To as in the request, To-tag added)."""
    lines = [
        f"SIP/2.0 {status} {phrase}",
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-{method.lower()}-{cseq}",
        f"From: \"Caller\" <sip:{caller}@10.0.0.1>" + (f";tag={from_tag}" if from_tag else ""),
        f"To: <{callee_uri}>" + (f";tag={to_tag}" if to_tag and status > 100 else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        "Content-Length: 0",
    ]
    return b"\r\n".join(x.encode() for x in lines) + b"\r\n\r\n"


def callee_request(
    method: str,
    cseq: int,
    *,
    call_id: str = "call-1@10.0.0.1",
    caller_tag: str = "caller-tag",
    callee_tag: str = "callee-tag",
    headers: Iterable[str] = (),
) -> bytes:
    """An in-dialog request sent by the callee (From/To swapped)."""
    lines = [
        f"{method} sip:caller@10.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bK-uas-{method.lower()}-{cseq}",
        f"From: <sip:+37410123456@10.0.0.3>;tag={callee_tag}",
        f"To: \"Caller\" <sip:+15551230000@10.0.0.1>;tag={caller_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        "Content-Length: 0",
    ]
    return b"\r\n".join(x.encode() for x in lines) + b"\r\n\r\n"


def callee_response(
    status: int,
    cseq: int,
    method: str,
    *,
    call_id: str = "call-1@10.0.0.1",
    caller_tag: str = "caller-tag",
    callee_tag: str = "callee-tag",
    headers: Iterable[str] = (),
) -> bytes:
    """The caller's response to a callee-sent request (From = callee)."""
    lines = [
        f"SIP/2.0 {status} Whatever",
        f"Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bK-uas-{method.lower()}-{cseq}",
        f"From: <sip:+37410123456@10.0.0.3>;tag={callee_tag}",
        f"To: \"Caller\" <sip:+15551230000@10.0.0.1>;tag={caller_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        "Content-Length: 0",
    ]
    return b"\r\n".join(x.encode() for x in lines) + b"\r\n\r\n"
