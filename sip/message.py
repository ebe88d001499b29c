"""SIP message parser: only the fields billing needs, found fast, one typed error on bad input.

RFC 3261 §7 framing: a start line, header lines, an empty line, a body. Accepted variations seen
in real traffic: CRLF or bare LF, folded header lines (§7.3.1), case-insensitive and compact
header names (i f t v l x …), repeated and comma-joined Via, a missing empty line (a header-only
message). Headers billing does not need are never split or decoded. The five every message
needs (Call-ID, From, To, CSeq, Content-Length) are read in three tiers, each taken only when
the one before does not describe the message: one anchored match for the layout real UAs and
proxies send (`_common_layout`: canonical spelling, From/To/Call-ID/CSeq/Content-Length in that
order, CRLF; it also finds the start line and the end of the header block); `bytes.find` on
the canonical spellings in any order; one regex scan that knows every form (case, compact
names, folding). The first two give the same result wherever the first matches (a hypothesis
test edits messages at their line edges to check); a malformed message that spells one header
two ways may be read either way by the last two. Optional headers (Via,
Session-Expires, Min-SE, Reason, Record-Route) and URI users are read only when asked for.

`parse` raises `SipError` — with a short `reason` usable as a metric label — and nothing else,
whatever bytes it is given.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_MESSAGE", "SipError", "SipMessage", "parse", "uri_user"]

MAX_MESSAGE = 65535  # larger than any UDP datagram: not a SIP message we could have captured

# The headers every message needs, by every name they go by (RFC 3261 §7.3.3 compact forms).
# Longer names come before their one-letter prefixes. A value runs on over folded lines.
_VALUE = rb"[ \t]*:[ \t]*([^\r\n]*(?:\r?\n[ \t]+[^\r\n]*)*)"
_HEADER_RE = re.compile(rb"\n(call-id|i|from|f|to|t|cseq|content-length|l)" + _VALUE, re.I)
_CALL_ID, _FROM, _TO, _CSEQ, _CL = range(5)
_CANON: dict[bytes, int] = {}
for _names, _code in (
    ((b"call-id", b"i"), _CALL_ID),
    ((b"from", b"f"), _FROM),
    ((b"to", b"t"), _TO),
    ((b"cseq",), _CSEQ),
    ((b"content-length", b"l"), _CL),
):
    for _n in _names:
        _CANON[_n] = _code
# Optional headers, found on demand: the first line of any spelling.
_VIA_RE = re.compile(rb"\n(?:via|v)" + _VALUE, re.I)
_SE_RE = re.compile(rb"\n(?:session-expires|x)" + _VALUE, re.I)
_MIN_SE_RE = re.compile(rb"\nmin-se" + _VALUE, re.I)
_REASON_RE = re.compile(rb"\nreason" + _VALUE, re.I)
_RR_RE = re.compile(rb"\nrecord-route[ \t]*:", re.I)

# The layout nearly every UA and proxy sends (sipp, Kamailio, Asterisk, FreeSWITCH): CRLF lines,
# From, To, Call-ID, CSeq and Content-Length once each in that order, spelled as RFC 3261
# writes them, unfolded, other headers anywhere between. One match reads the start line, the
# five values and the end of the header block; a message it does not describe exactly takes
# the general path below, and wherever it matches both give the same result (tested):
# - no line before the empty one is empty or a lone CR (other lines are ``[^\n]+\r\n``, the
#   five end in LF with at least their name before it), so the first CRLF CRLF is where the
#   match ends and there is no earlier LF LF: the general path's end of the header block;
# - none of the five appears before the one the layout expects there (`_OTHER` refuses their
#   names at a line start), so each value is its header's first occurrence, as `bytes.find`
#   would give; a value is its line stripped of ASCII whitespace, as `bytes.strip` gives;
# - the line after each value is not a continuation (it starts with the next header name, or
#   is checked not to start with space or tab).
# Possessive quantifiers (atomic: never given back), so a message that almost matches fails in
# linear time; `re` also runs them ~20 % faster than atomic groups or plain quantifiers here.
_FIVE = rb"(?:Call-ID|From|To|CSeq|Content-Length):"
_OTHER = rb"(?:(?!" + _FIVE + rb")[^\n]+\r\n)*+"
_VAL = rb":[ \t\r\x0b\x0c]*+((?:[^\n]*[^\s])?+)[ \t\r\x0b\x0c]*+\n(?![ \t])"
_common_layout = re.compile(
    rb"([^\n]*)\r\n" + _OTHER + rb"From" + _VAL + _OTHER + rb"To" + _VAL + _OTHER
    + rb"Call-ID" + _VAL + _OTHER + rb"CSeq" + _VAL + _OTHER + rb"Content-Length" + _VAL
    + rb"(?:[^\n]+\r\n)*+(?<=\r\n)\r\n"
).match
_METHODS = {
    m.encode(): m
    for m in ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE",
              "INFO", "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH")
}  # fmt: skip

_FOLD_RE = re.compile(rb"\r?\n[ \t]+")
_TOKEN_RE = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+")
_TAG_RE = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_BRANCH_RE = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_MISSING = object()
_MAX_DIGITS = 10  # int() on a 5000-digit string raises; nothing we bill needs more than 2**32


class SipError(ValueError):
    """Bytes that are not a SIP message billing can use; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"SIP {reason}: {detail}")
        self.reason = reason


class SipMessage(NamedTuple):
    """The billing view of one SIP request or response (immutable; a NamedTuple to build fast).

    `method` is None for responses and `status` is 0 for requests. Fields every message needs
    are decoded by `parse`; the rest are read from the kept header block on demand by the
    properties (`ruri_user`, `from_user`, `to_user`, `via_branch`, `session_expires`, `min_se`,
    `reason`, `has_record_route`), which never raise: a malformed optional header reads as None.
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
    content_length: int | None
    raw: bytes  # the whole message as captured
    head_end: int  # raw[:head_end] is the start line and headers
    body_start: int
    body_end: int

    @property
    def head(self) -> bytes:
        """Start line and header lines, without the empty line."""
        return self.raw[: self.head_end]

    @property
    def body(self) -> bytes:
        """The message body (cut to Content-Length when that is shorter)."""
        return self.raw[self.body_start : self.body_end]

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

    @property
    def via_branch(self) -> str | None:
        """The branch parameter of the topmost Via (the transaction id, RFC 3261 §17.2.3)."""
        v = _optional(_VIA_RE, self.head)
        if v is None:
            return None
        comma = v.find(b",")
        m = _BRANCH_RE.search(v[:comma] if comma >= 0 else v)
        return _text(m.group(1)) if m else None

    @property
    def session_expires(self) -> int | None:
        """Session-Expires delta-seconds (RFC 4028), None if absent or malformed."""
        return _seconds(_optional(_SE_RE, self.head))

    @property
    def min_se(self) -> int | None:
        """Min-SE delta-seconds (RFC 4028), None if absent or malformed."""
        return _seconds(_optional(_MIN_SE_RE, self.head))

    @property
    def reason(self) -> str | None:
        """The Reason header (RFC 3326) as text, e.g. ``Q.850;cause=16``."""
        v = _optional(_REASON_RE, self.head)
        return None if v is None else _text(v.strip())

    @property
    def has_record_route(self) -> bool:
        """Whether a proxy asked to stay on the dialog's path (RFC 3261 §16.6)."""
        return _RR_RE.search(self.head) is not None


def _optional(rx: re.Pattern[bytes], head: bytes) -> bytes | None:
    m = rx.search(head)
    if m is None:
        return None
    v = m.group(1)
    return _FOLD_RE.sub(b" ", v) if b"\n" in v else v


def _seconds(value: bytes | None) -> int | None:
    if value is None:
        return None
    v = value.split(b";", 1)[0].strip()
    return int(v) if v.isdigit() and len(v) <= _MAX_DIGITS else None


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


_TAG_CACHE: dict[bytes, str | None] = {}
_TAG_CACHE_MAX = 1 << 16  # every packet of a call repeats its From (and mostly its To) value


def _remember_tag(value: bytes) -> str | None:
    # The memo's miss path: `parse` reads `_TAG_CACHE` itself (two calls per packet saved).
    if len(_TAG_CACHE) >= _TAG_CACHE_MAX:
        _TAG_CACHE.clear()
    tag = _TAG_CACHE[value] = _find_tag(value)
    return tag


def _find_tag(value: bytes) -> str | None:
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


_new_message = tuple.__new__  # NamedTuple construction without the keyword-handling wrapper
# A call's packets repeat a handful of start lines ("SIP/2.0 200 OK", the ACK and BYE sent to
# the callee's Contact) and CSeq values ("1 INVITE"): parse each once. Bounded: cleared when
# full (16,384 lines of ~60 bytes: a few MB at most).
_CACHE_MAX = 1 << 14
_StartLine = tuple[str | None, int, str, bytes]  # method, status, phrase, Request-URI
_START_CACHE: dict[bytes, _StartLine] = {}
_CSEQ_CACHE: dict[bytes, tuple[int, str]] = {}


def _start_line(start: bytes) -> _StartLine:
    if start.startswith(b"SIP/2.0 "):
        code = start[8:11]
        if len(code) != 3 or not code.isdigit() or start[11:12] not in (b" ", b""):
            raise SipError("bad_start_line", f"status line {start[:60]!r}")
        status = int(code)
        if not 100 <= status <= 699:
            raise SipError("bad_status", f"status {status} outside 100–699")
        line: _StartLine = (None, status, start[12:].decode("utf-8", "replace"), b"")
    else:
        parts = start.split(b" ")
        if len(parts) != 3 or parts[2] != b"SIP/2.0":
            raise SipError("bad_start_line", f"request line {start[:60]!r}")
        method = _method(parts[0], "bad_start_line", "request method")
        if not parts[1]:
            raise SipError("bad_start_line", "empty Request-URI")
        line = (method, 0, "", parts[1])
    if len(_START_CACHE) >= _CACHE_MAX:
        _START_CACHE.clear()
    _START_CACHE[start] = line
    return line


def _method(token: bytes, reason: str, what: str) -> str:
    """A method name: one of RFC 3261's and its extensions' as the same str, else any token."""
    method = _METHODS.get(token)
    if method is None:
        if not _TOKEN_RE.fullmatch(token):
            raise SipError(reason, f"{what} {token[:20]!r}")
        method = token.decode("ascii")
    return method


def _cseq(value: bytes) -> tuple[int, str]:
    cs = value.split()
    if len(cs) != 2 or not cs[0].isdigit() or len(cs[0]) > _MAX_DIGITS:
        raise SipError("bad_cseq", f"CSeq {value[:40]!r}, expected 'NUMBER METHOD'")
    num = int(cs[0])
    if num >= 2**31:
        raise SipError("bad_cseq", f"CSeq number {num} is not below 2**31")
    method = _method(cs[1], "bad_cseq", "CSeq method")
    if len(_CSEQ_CACHE) >= _CACHE_MAX:
        _CSEQ_CACHE.clear()
    r = _CSEQ_CACHE[value] = (num, method)
    return r


def _digits(value: bytes) -> int:
    v = value.split(b";", 1)[0].strip()
    if not v.isdigit() or len(v) > _MAX_DIGITS:
        raise SipError("bad_content_length", f"Content-Length {value[:40]!r} is not a number")
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

    m = _common_layout(data)
    if m is not None:
        start, from_v, to_v, call_id, cseq_v, cl_v = m.groups()
        bstart = m.end()
        hlen = bstart - 4
    else:
        # Header block ends at the first empty line, whichever line ending the sender used.
        crlf = data.find(b"\r\n\r\n")
        lf = data.find(b"\n\n", 0, n if crlf < 0 else crlf + 2)
        if lf >= 0:
            hlen, bstart = lf, lf + 2
        elif crlf >= 0:
            hlen, bstart = crlf, crlf + 4
        else:
            hlen = bstart = n
        nl = data.find(b"\n", 0, hlen)
        start = data[: hlen if nl < 0 else nl]
        if start[-1:] == b"\r":
            start = start[:-1]
        found = _canonical(data, hlen) if hlen < n else None
        if found is None:
            found = _any_spelling(data[:hlen])
        call_id, from_v, to_v, cseq_v, cl_v = found

    line = _START_CACHE.get(start)
    method, status, phrase, ruri = line if line is not None else _start_line(start)

    if call_id is None:
        raise SipError("no_call_id", "missing Call-ID header")
    if from_v is None:
        raise SipError("no_from", "missing From header")
    if to_v is None:
        raise SipError("no_to", "missing To header")
    if cseq_v is None:
        raise SipError("no_cseq", "missing CSeq header")
    call_id = call_id.strip()
    if not call_id:
        raise SipError("no_call_id", "empty Call-ID header")

    cached_cseq = _CSEQ_CACHE.get(cseq_v)
    cseq_num, cseq_method = cached_cseq if cached_cseq is not None else _cseq(cseq_v)
    if method is not None and cseq_method != method:
        # RFC 3261 §8.1.1.5: the CSeq method MUST match the request's (ACK and CANCEL included).
        raise SipError("bad_cseq", f"CSeq method {cseq_method} on a {method} request")

    content_length: int | None = None
    bend = n
    if cl_v is not None:
        v = cl_v.strip()
        content_length = int(v) if v.isdigit() and len(v) <= _MAX_DIGITS else _digits(cl_v)
        if content_length > n - bstart:
            raise SipError(
                "short_body", f"Content-Length {content_length}, only {n - bstart} body bytes"
            )
        bend = bstart + content_length

    from_tag = _TAG_CACHE.get(from_v, _MISSING)
    if from_tag is _MISSING:
        from_tag = _remember_tag(from_v)
    to_tag = _TAG_CACHE.get(to_v, _MISSING)
    if to_tag is _MISSING:
        to_tag = _remember_tag(to_v)
    return _new_message(
        SipMessage,
        (
            method,
            status,
            phrase,
            ruri,
            from_v,
            from_tag,
            to_v,
            to_tag,
            call_id.decode("utf-8", "replace"),
            cseq_num,
            cseq_method,
            content_length,
            data,
            hlen,
            bstart,
            bend,
        ),
    )


_Found = tuple[bytes | None, bytes | None, bytes | None, bytes | None, bytes | None]


def _canonical(data: bytes, hlen: int) -> _Found | None:
    """The five headers if all are spelled as RFC 3261 writes them, unfolded; else None.

    `data[:hlen]` is the header block and an empty line follows it, so every header line has
    a line end to find. Written out rather than looped: this is most of the parser's time.
    """
    i = data.find(b"\nCall-ID:", 0, hlen)
    j = data.find(b"\nFrom:", 0, hlen)
    k = data.find(b"\nTo:", 0, hlen)
    m = data.find(b"\nCSeq:", 0, hlen)
    c = data.find(b"\nContent-Length:", 0, hlen)
    if i < 0 or j < 0 or k < 0 or m < 0 or c < 0:
        return None  # another spelling, a compact form, or absent: the full scan decides
    e1 = data.find(b"\n", i + 9)
    e2 = data.find(b"\n", j + 6)
    e3 = data.find(b"\n", k + 4)
    e4 = data.find(b"\n", m + 6)
    e5 = data.find(b"\n", c + 16)
    sw = data.startswith
    if sw(_WSP, e1 + 1) or sw(_WSP, e2 + 1) or sw(_WSP, e3 + 1) or sw(_WSP, e4 + 1) or sw(
        _WSP, e5 + 1
    ):
        return None  # a folded line: the full scan joins it
    return (
        data[i + 9 : e1].strip(),
        data[j + 6 : e2].strip(),
        data[k + 4 : e3].strip(),
        data[m + 6 : e4].strip(),
        data[c + 16 : e5].strip(),
    )


_WSP = (b" ", b"\t")


def _any_spelling(head: bytes) -> _Found:
    """The needed headers in any spelling (case, compact form, folding); first one wins."""
    vals: list[bytes | None] = [None] * 5
    for name, value in _HEADER_RE.findall(head):
        k = _CANON[name.lower()]
        if vals[k] is None:
            vals[k] = _FOLD_RE.sub(b" ", value) if b"\n" in value else value
    return vals[0], vals[1], vals[2], vals[3], vals[4]
