"""SIP message parser: only the fields billing needs, found fast, one typed error on bad input.

RFC 3261 §7 framing: a start line, header lines, an empty line, a body. Accepted variations seen
in real traffic: CRLF or bare LF, folded header lines (§7.3.1), case-insensitive and compact
header names (i f t v l x …), repeated and comma-joined Via, a missing empty line (a header-only
message). Headers billing does not need are never split or decoded: one C-level regex scan
finds the interesting lines, URI users are extracted only when asked for.

`parse` raises `SipError` — with a short `reason` usable as a metric label — and nothing else,
whatever bytes it is given.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_MESSAGE", "SipError", "SipMessage", "parse", "uri_user"]

MAX_MESSAGE = 65535  # larger than any UDP datagram: not a SIP message we could have captured

# The headers billing reads, by every name they go by (compact forms from RFC 3261 §7.3.3 and
# RFC 4028 for Session-Expires "x"). Longer names come before their one-letter prefixes.
_HEADER_RE = re.compile(
    rb"\n(call-id|i|from|f|to|t|cseq|via|v|session-expires|x|min-se|reason|record-route"
    rb"|content-length|l)[ \t]*:[ \t]*([^\r\n]*(?:\r?\n[ \t]+[^\r\n]*)*)",
    re.IGNORECASE,
)
_CANON: dict[bytes, int] = {}
_CALL_ID, _FROM, _TO, _CSEQ, _VIA, _SE, _MIN_SE, _REASON, _RR, _CL = range(10)
for _names, _code in (
    ((b"call-id", b"i"), _CALL_ID),
    ((b"from", b"f"), _FROM),
    ((b"to", b"t"), _TO),
    ((b"cseq",), _CSEQ),
    ((b"via", b"v"), _VIA),
    ((b"session-expires", b"x"), _SE),
    ((b"min-se",), _MIN_SE),
    ((b"reason",), _REASON),
    ((b"record-route",), _RR),
    ((b"content-length", b"l"), _CL),
):
    for _n in _names:
        _CANON[_n] = _code

_FOLD_RE = re.compile(rb"\r?\n[ \t]+")
_TOKEN_RE = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+")
_TAG_RE = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_BRANCH_RE = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_MAX_DIGITS = 10  # int() on a 5000-digit string raises; nothing we bill needs more than 2**32


class SipError(ValueError):
    """Bytes that are not a SIP message billing can use; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"SIP {reason}: {detail}")
        self.reason = reason


class SipMessage(NamedTuple):
    """The billing view of one SIP request or response (immutable; a NamedTuple to build fast).

    `method` is None for responses and `status` is 0 for requests. `reason` is the Reason
    header (RFC 3326), `phrase` the response's reason phrase. `ruri`, `from_hdr` and `to_hdr`
    are kept raw; their users are decoded on demand (only the first INVITE of a call needs them).
    """

    method: str | None
    status: int
    phrase: str
    ruri: bytes
    from_hdr: bytes
    from_tag: str | None
    to_hdr: bytes
    to_tag: str | None
    call_id: str
    cseq_num: int
    cseq_method: str
    via_branch: str | None
    session_expires: int | None  # seconds
    min_se: int | None  # seconds
    reason: str | None
    has_record_route: bool
    content_length: int | None
    body: bytes

    @property
    def is_request(self) -> bool:
        """True for a request, False for a response."""
        return self.method is not None

    @property
    def ruri_user(self) -> str | None:
        """User part of the Request-URI (the dialled number); None for responses."""
        return uri_user(self.ruri) if self.method is not None else None

    @property
    def from_user(self) -> str:
        """User part of the From URI (the caller for an initial INVITE)."""
        return _addr_user(self.from_hdr)

    @property
    def to_user(self) -> str:
        """User part of the To URI."""
        return _addr_user(self.to_hdr)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def uri_user(uri: bytes) -> str:
    """The user part of a SIP/SIPS/TEL URI (`sip:+3741234@gw;user=phone` → ``+3741234``).

    Empty string when the URI has no user part (`sip:gw.example`).
    """
    colon = uri.find(b":")
    rest = uri[colon + 1 :] if colon >= 0 else uri
    scheme = uri[:colon].lower() if colon >= 0 else b""
    if scheme == b"tel":
        semi = rest.find(b";")
        return _text(rest[:semi] if semi >= 0 else rest)
    at = rest.find(b"@")
    if at < 0:
        return ""
    user = rest[:at]
    # user:password is legal in a SIP URI; the password is never part of the number.
    pw = user.find(b":")
    return _text(user[:pw] if pw >= 0 else user)


def _addr_split(value: bytes) -> tuple[bytes, bytes]:
    """Split a From/To value into (URI, header params), honouring a quoted display name."""
    v = value
    if v[:1] == b'"':
        # Skip the quoted display name; it may hold '<', ';' or escaped quotes.
        i = 1
        n = len(v)
        while i < n:
            c = v[i]
            if c == 0x5C:  # backslash escapes the next character
                i += 2
                continue
            if c == 0x22:
                break
            i += 1
        v = v[i + 1 :]
    lt = v.find(b"<")
    if lt >= 0:
        gt = v.find(b">", lt)
        if gt < 0:
            return v[lt + 1 :], b""
        return v[lt + 1 : gt], v[gt + 1 :]
    semi = v.find(b";")
    if semi < 0:
        return v.strip(), b""
    return v[:semi].strip(), v[semi:]


def _addr_user(value: bytes) -> str:
    return uri_user(_addr_split(value)[0])


def _tag(value: bytes) -> str | None:
    # Header params follow the URI's closing '>' (or, with no brackets, the URI itself, which
    # may then carry no params of its own): the last '>' is always the URI's, even when a
    # quoted display name holds another.
    rest = value[value.rfind(b">") + 1 :]
    i = rest.find(b";tag=")
    if i >= 0:
        t = rest[i + 5 :]
        j = t.find(b";")
        if j >= 0:
            t = t[:j]
        t = t.strip()
        return t.decode("utf-8", "replace") if t else None
    if b"=" not in rest:
        return None
    m = _TAG_RE.search(rest)  # unusual spelling: ";TAG = x", ";  tag=x"
    return _text(m.group(1)) if m else None


def _digits(value: bytes, what: str) -> int:
    v = value.strip()
    semi = v.find(b";")
    if semi >= 0:
        v = v[:semi].rstrip()
    if not v.isdigit() or len(v) > _MAX_DIGITS:
        raise SipError(f"bad_{what}", f"{what.replace('_', '-')} {value[:40]!r} is not a number")
    return int(v)


def parse(data: bytes) -> SipMessage:
    """Parse one SIP message (request or response). Raises `SipError` and nothing else."""
    n = len(data)
    if n > MAX_MESSAGE:
        raise SipError("oversized", f"{n} bytes, more than one datagram can carry")
    if n == 0:
        raise SipError("empty", "no bytes")
    if not isinstance(data, bytes):
        data = bytes(data)

    # Header block ends at the first empty line, whichever line ending the sender used.
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n", 0, n if crlf < 0 else crlf + 2)
    if lf >= 0:
        head, body = data[:lf], data[lf + 2 :]
    elif crlf >= 0:
        head, body = data[:crlf], data[crlf + 4 :]
    else:
        head, body = data, b""
    nl = head.find(b"\n")
    start = head if nl < 0 else head[:nl]
    if start[-1:] == b"\r":
        start = start[:-1]

    if start.startswith(b"SIP/2.0 "):
        method: str | None = None
        code = start[8:11]
        if len(code) != 3 or not code.isdigit() or start[11:12] not in (b" ", b""):
            raise SipError("bad_start_line", f"status line {start[:60]!r}")
        status = int(code)
        if not 100 <= status <= 699:
            raise SipError("bad_status", f"status {status} outside 100–699")
        phrase = _text(start[12:])
        ruri = b""
    else:
        parts = start.split(b" ")
        if len(parts) != 3 or parts[2] != b"SIP/2.0" or not _TOKEN_RE.fullmatch(parts[0]):
            raise SipError("bad_start_line", f"request line {start[:60]!r}")
        method = parts[0].decode("ascii")
        if not parts[1]:
            raise SipError("bad_start_line", "empty Request-URI")
        ruri = parts[1]
        status = 0
        phrase = ""

    call_id = from_v = to_v = cseq_v = via_v = se_v = min_se_v = reason_v = cl_v = None
    has_rr = False
    canon = _CANON
    for name, value in _HEADER_RE.findall(head):
        if b"\n" in value:  # a folded line (RFC 3261 §7.3.1): continuation is one space
            value = _FOLD_RE.sub(b" ", value)
        code_ = canon[name.lower()]
        if code_ == _CALL_ID:
            if call_id is None:
                call_id = value
        elif code_ == _FROM:
            if from_v is None:
                from_v = value
        elif code_ == _TO:
            if to_v is None:
                to_v = value
        elif code_ == _CSEQ:
            if cseq_v is None:
                cseq_v = value
        elif code_ == _VIA:
            if via_v is None:
                via_v = value
        elif code_ == _RR:
            has_rr = True
        elif code_ == _SE:
            if se_v is None:
                se_v = value
        elif code_ == _MIN_SE:
            if min_se_v is None:
                min_se_v = value
        elif code_ == _REASON:
            if reason_v is None:
                reason_v = value
        elif cl_v is None:
            cl_v = value

    if call_id is None or not call_id.strip():
        raise SipError("no_call_id", "missing Call-ID header")
    if from_v is None:
        raise SipError("no_from", "missing From header")
    if to_v is None:
        raise SipError("no_to", "missing To header")
    if cseq_v is None:
        raise SipError("no_cseq", "missing CSeq header")

    cs = cseq_v.split()
    if len(cs) != 2 or not cs[0].isdigit() or len(cs[0]) > _MAX_DIGITS:
        raise SipError("bad_cseq", f"CSeq {cseq_v[:40]!r}, expected 'NUMBER METHOD'")
    cseq_num = int(cs[0])
    if cseq_num >= 2**31:
        raise SipError("bad_cseq", f"CSeq number {cseq_num} is not below 2**31")
    if not _TOKEN_RE.fullmatch(cs[1]):
        raise SipError("bad_cseq", f"CSeq method {cs[1][:20]!r}")
    cseq_method = cs[1].decode("ascii")
    if method is not None and cseq_method != method:
        # RFC 3261 §8.1.1.5: the CSeq method MUST match the request's (ACK and CANCEL included).
        raise SipError("bad_cseq", f"CSeq method {cseq_method} on a {method} request")

    content_length: int | None = None
    if cl_v is not None:
        content_length = _digits(cl_v, "content_length")
        if content_length > len(body):
            raise SipError(
                "short_body", f"Content-Length {content_length}, only {len(body)} body bytes"
            )
        body = body[:content_length]

    via_branch: str | None = None
    if via_v is not None:
        comma = via_v.find(b",")
        top = via_v[:comma] if comma >= 0 else via_v
        m = _BRANCH_RE.search(top)
        if m:
            via_branch = _text(m.group(1))

    return SipMessage(
        method,
        status,
        phrase,
        ruri,
        from_v,
        _tag(from_v),
        to_v,
        _tag(to_v),
        _text(call_id.strip()),
        cseq_num,
        cseq_method,
        via_branch,
        None if se_v is None else _digits(se_v, "session_expires"),
        None if min_se_v is None else _digits(min_se_v, "min_se"),
        None if reason_v is None else _text(reason_v.strip()),
        has_rr,
        content_length,
        body,
    )
