"""CDR lines pushed by gateways (SPEC §3.2): one JSON object per datagram or per file line.

Pure: text in, `CdrCall` out. The billing identity of a CDR is (`call_id`, originating trunk
as given by `trunk` or `src`): a Call-ID is only unique per originating user agent, and the
same line delivered twice (UDP resend, or UDP and then `vmgatectl cdr import`) must bill once.
Times are deliberately *not* part of the identity, so a resend with different times is a key
conflict the ledger refuses and counts, never a second charge.

An unanswered CDR without `sip_code` is recorded with code 0 ("not reported") and disposition
`no_answer`, since a gateway that omits the code most often means the call rang out. A 2xx
`sip_code` with a null `answer` is refused (`bad_field`): billing it as unanswered would turn
a gateway's missing field into free calls.

An answered CDR longer than `calls.max_duration` is billed as the HEP path bills a call whose
BYE never came: ended at answer + max_duration and flagged `max_duration`. The line is kept
(nothing is lost, history shows the flag); what it claims beyond the cap is not billed — a
gateway clock or a typo can otherwise claim centuries (`"end": "9999-01-01"` billed 27 million
USD before this rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from hashlib import blake2b
from typing import Any

from rating.units import UnitError, parse_time
from sip.call import Addr, CallRecord, Disposition, Hop

MAX_LINE = 8192
_KNOWN = frozenset(
    {"call_id", "trunk", "src", "client", "dst", "caller", "callee", "start", "answer", "end",
     "sip_code"}
)


class CdrError(ValueError):
    """A CDR line that cannot be billed; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CdrCall:
    """A parsed CDR: the call record plus whatever the line named directly."""

    uid: str
    record: CallRecord
    trunk: str | None  # trunk id given by the line (else attribution uses record.hops)
    client: str | None


def parse_addr(text: str) -> Addr:
    """Read `ip`, `ip:port` or `[v6]:port` (port 0 when absent)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "0"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "0"
    if not host or not port.isdigit() or int(port) > 65535:
        raise CdrError("bad_field", f"{text!r} is not an address (ip, ip:port or [v6]:port)")
    return (host, int(port))


def _time(obj: dict[str, Any], field: str, required: bool) -> int | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise CdrError("missing_field", f"{field}: required")
        return None
    if isinstance(value, (bool, float)):
        # json floats are binary; we re-read the literal exactly via parse_float=Decimal,
        # so a float here means a caller bypassed parse_line.
        raise CdrError("bad_field", f"{field}: {value!r} must be RFC 3339 or epoch seconds")
    if not isinstance(value, str | int | Decimal):
        raise CdrError("bad_field", f"{field}: {value!r} must be RFC 3339 or epoch seconds")
    try:
        return parse_time(value)
    except UnitError as exc:
        raise CdrError("bad_field", f"{field}: {exc}") from exc


def _text(obj: dict[str, Any], field: str, default: str | None = None) -> str | None:
    value = obj.get(field, default)
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise CdrError("bad_field", f"{field}: {value!r} must be a string")
    text = str(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON lets "\ud800" through; UTF-8 cannot hold it
            raise CdrError("bad_field", f"{field}: {value!r} is not valid Unicode") from exc
    return text


def _disposition(answered: bool, code: int) -> Disposition:
    if answered:
        return Disposition.ANSWERED
    if code in (486, 600):
        return Disposition.BUSY
    if code == 487:
        return Disposition.CANCELLED
    if code in (0, 408, 480):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


def parse_line(
    data: bytes | str, sender: Addr | None = None, max_duration_us: int | None = None
) -> CdrCall:
    """Parse one CDR JSON object; `sender` is the datagram source (used when `src` is absent).

    `max_duration_us`: the daemon's `calls.max_duration`; an answered call longer than that is
    cut to it and flagged (module doc). None: no cap (tests of the parser alone).
    """
    if len(data) > MAX_LINE:
        raise CdrError("oversized", f"CDR line of {len(data)} bytes exceeds {MAX_LINE}")
    try:
        obj = json.loads(data, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise CdrError("bad_json", f"not a JSON object: {exc}") from exc
    if not isinstance(obj, dict):
        raise CdrError("bad_json", "a CDR line must be one JSON object")
    unknown = sorted(set(obj) - _KNOWN)
    if unknown:
        raise CdrError("bad_field", f"unknown fields {unknown}; allowed: {sorted(_KNOWN)}")
    call_id = _text(obj, "call_id")
    if not call_id:
        raise CdrError("missing_field", "call_id: required")
    # An empty value is an absent one: `"src": ""` used to fall back to the datagram's
    # sender, ephemeral port included, which then made the billing identity — a resend
    # from another socket was a second call.
    trunk = _text(obj, "trunk") or None
    src_text = _text(obj, "src") or None
    if trunk is None and src_text is None:
        raise CdrError("missing_field", "trunk or src: one is required")
    client = _text(obj, "client") or None
    dst_text = _text(obj, "dst") or None
    if client is None and dst_text is None:
        raise CdrError("missing_field", "client or dst: one is required")
    src = parse_addr(src_text) if src_text else (sender or ("0.0.0.0", 0))
    dst = parse_addr(dst_text) if dst_text else ("0.0.0.0", 0)
    start = _time(obj, "start", True)
    answer = _time(obj, "answer", False)
    end = _time(obj, "end", True)
    assert start is not None and end is not None  # required=True above
    if end < start or (answer is not None and not start <= answer <= end):
        raise CdrError("bad_field", "times must satisfy start <= answer <= end")
    code_value = obj.get("sip_code")
    if code_value is None:
        code = 200 if answer is not None else 0
    elif isinstance(code_value, int) and not isinstance(code_value, bool) and (
        code_value == 0 or 100 <= code_value <= 699
    ):
        code = code_value
    else:
        raise CdrError("bad_field", f"sip_code: {code_value!r} is not a SIP status code")
    if answer is None and 200 <= code < 300:
        # A gateway that reports answers without their time would otherwise have every call
        # recorded as failed and billed 0, silently: refused and counted instead.
        raise CdrError("bad_field", f"sip_code {code} says answered but answer is null; "
                       "give the answer time")
    flags: tuple[str, ...] = ()
    if answer is not None and max_duration_us is not None and end - answer > max_duration_us:
        end = answer + max_duration_us
        flags = ("max_duration",)
    origin = trunk if trunk is not None else f"{src[0]}:{src[1]}"
    uid = blake2b(f"cdr\x00{call_id}\x00{origin}".encode(), digest_size=12).hexdigest()
    record = CallRecord(
        call_id=call_id,
        from_tag="",
        caller=_text(obj, "caller", "") or "",
        callee=_text(obj, "callee", "") or "",
        start=start,
        answer=answer,
        end=end,
        sip_code=code,
        disposition=_disposition(answer is not None, code),
        hops=(Hop(src=src, dst=dst, capture_id=None),),
        flags=flags,
    )
    return CdrCall(uid=uid, record=record, trunk=trunk, client=client)
