"""HEP (Homer Encapsulation Protocol) codec: HEPv3 chunks, plus the older HEPv1/v2 header.

HEPv3 follows the sipcapture spec (rev 37): a 6-byte header ``"HEP3" + total length`` then
chunks of ``vendor(2) type(2) length(2) value``, all big-endian, ``length`` counting the
6-byte chunk header. Only generic chunks (vendor 0) are read; vendor chunks and unknown types
are skipped. Lengths are checked strictly, because a lying length is how a bad datagram smuggles
garbage into the SIP parser.

HEPv1/v2 are what Kamailio's siptrace emits with ``hep_version 1|2``: an 8-byte header
(version, header length, family, protocol, source port, destination port — ports big-endian),
the two addresses (header length 16 for IPv4, 40 for IPv6, as in tests/data/kamailio_hepv2.pcap),
and for v2 a 12-byte *little-endian* time header
(seconds, microseconds, capture id u16, 2 bytes padding) before the payload.

No I/O: bytes in, `HepPacket` out.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import zlib
from typing import NamedTuple

from sip.call import Addr

__all__ = ["PROTO_SIP", "HepError", "HepPacket", "decode", "encode", "is_hep"]

PROTO_SIP = 0x01  # HEP "protocol type" chunk value for SIP
MAX_PAYLOAD = 65535  # a decompressed payload larger than one UDP datagram is refused

_AF_INET = 2
_AF_INET6 = 10
_MAGIC = b"HEP3"

# Generic chunk types (vendor 0x0000), sipcapture HEP rev 37.
_IP_FAMILY = 0x01
_IP_PROTO = 0x02
_SRC_IP4 = 0x03
_DST_IP4 = 0x04
_SRC_IP6 = 0x05
_DST_IP6 = 0x06
_SRC_PORT = 0x07
_DST_PORT = 0x08
_TS_SEC = 0x09
_TS_USEC = 0x0A
_PROTO_TYPE = 0x0B
_CAPTURE_ID = 0x0C
_KEEPALIVE = 0x0D
_AUTH_KEY = 0x0E
_PAYLOAD = 0x0F
_PAYLOAD_GZ = 0x10
_CORRELATION_ID = 0x11
_VLAN = 0x12
_NODE_NAME = 0x13  # "group id" in older revisions; heplify and HOMER 7 read it as node name

# Total chunk length (header included) for every fixed-size generic chunk; anything else in
# these types is a malformed datagram, not a tolerable variation.
_FIXED_LEN: dict[int, int] = {
    _IP_FAMILY: 7,
    _IP_PROTO: 7,
    _SRC_IP4: 10,
    _DST_IP4: 10,
    _SRC_IP6: 22,
    _DST_IP6: 22,
    _SRC_PORT: 8,
    _DST_PORT: 8,
    _TS_SEC: 10,
    _TS_USEC: 10,
    _PROTO_TYPE: 7,
    _CAPTURE_ID: 10,
    _KEEPALIVE: 8,
    _VLAN: 8,
}

_chunk_hdr = struct.Struct(">HHH")
# Kamailio's siptrace (and our encoder) write chunks 0x01–0x04, 0x07–0x0C first, in this order,
# for IPv4, then the payload. That layout is recognised by one `re` match of the ten chunk
# headers (values as wildcards) and its values read with one unpack; anything else takes the
# general chunk walk.
_KAM_CHUNKS = ((0x01, 7), (0x02, 7), (0x03, 10), (0x04, 10), (0x07, 8), (0x08, 8), (0x09, 10),
               (0x0A, 10), (0x0B, 7), (0x0C, 10))  # fmt: skip
_KAM_VALUES = struct.Struct(">6xB6xB6x4s6x4s6xH6xH6xI6xI6xB6xI")
_KAM_END = 6 + _KAM_VALUES.size  # where the payload chunk header starts
_KAM_PAYLOAD = _KAM_END + 6  # where the payload starts


def _kam_layout() -> re.Pattern[bytes]:
    # The ten chunk headers and the payload chunk's vendor and type, as literal bytes; every
    # value byte is a wildcard. One `re` match compares them without building anything.
    pattern = b""
    for ctype, clen in _KAM_CHUNKS:
        pattern += re.escape(_chunk_hdr.pack(0, ctype, clen)) + b"." * (clen - 6)
    return re.compile(pattern + b"\x00\x00\x00\x0f", re.DOTALL)


_kam_match = _kam_layout().match
_new_packet = tuple.__new__  # NamedTuple construction without the keyword-handling wrapper
_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_v2_time = struct.Struct("<IIH2x")  # Kamailio writes struct hep_timehdr in host (x86) order
_v12_hdr = struct.Struct(">BBBBHH")


class HepError(ValueError):
    """A datagram that is not acceptable HEP; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"HEP {reason}: {detail}")
        self.reason = reason


class HepPacket(NamedTuple):
    """One decoded HEP datagram: who sent what to whom, when it was captured, by which agent.

    Immutable (a NamedTuple: it is built once per packet, and that has to be cheap).
    """

    version: int
    family: int  # 2 (IPv4) or 10 (IPv6), as decided by the address chunks present
    ip_proto: int  # 17 UDP, 6 TCP, 132 SCTP
    src: Addr
    dst: Addr
    ts_us: int  # capture time, EpochUs
    proto_type: int  # 1 = SIP
    capture_id: int | None
    auth_key: bytes | None
    payload: bytes
    correlation_id: str | None
    node_name: str | None


def is_hep(data: bytes | memoryview) -> bool:
    """Sniff whether `data` starts like a HEPv3, v2 or v1 datagram (header only, cheap).

    A SIP message starts with a letter, so the binary v1/v2 header never collides with it.
    """
    head = bytes(data[:4])
    if head == _MAGIC:
        return True
    if len(data) < 16:
        return False
    ver, hlen, fam = head[0], head[1], head[2]
    return ver in (1, 2) and (
        (hlen == 16 and fam == _AF_INET) or (hlen == 40 and fam == _AF_INET6)
    )


_IP4_CACHE: dict[bytes, str] = {}


def _ip4(b: bytes) -> str:
    # A capture agent reports few distinct addresses; formatting each once saves the f-string.
    s = _IP4_CACHE.get(b)
    if s is None:
        if len(_IP4_CACHE) >= 4096:
            _IP4_CACHE.clear()
        s = _IP4_CACHE[b] = f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"
    return s


def _ip6(b: bytes | memoryview) -> str:
    return ipaddress.IPv6Address(bytes(b)).compressed


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def decode(data: bytes, *, sip_only: bool = True) -> HepPacket:
    """Decode one HEP datagram (v3, v2 or v1). Raises `HepError` and nothing else.

    With `sip_only` (the default) a packet whose protocol type is not SIP is refused with
    reason ``not_sip``: the daemon only bills SIP, RTCP/log chunks are noise to it.
    """
    if data[:4] == _MAGIC:
        n = len(data)
        if n > _KAM_PAYLOAD and (data[4] << 8 | data[5]) == n:
            fast = _decode_kamailio(data, n, sip_only)
            if fast is not None:
                return fast
        return _decode_v3(data, sip_only)
    if len(data) >= 1 and data[0] in (1, 2):
        return _decode_v12(data)
    if len(data) < 4:
        raise HepError("truncated", f"{len(data)} bytes, a HEP header needs at least 6")
    raise HepError("bad_magic", f"starts with {bytes(data[:4])!r}, expected b'HEP3' or v1/v2")


def _decode_v3(data: bytes, sip_only: bool) -> HepPacket:
    n = len(data)
    if n < 6:
        raise HepError("truncated", f"{n} bytes, the HEP3 header needs 6")
    if n > 65535:
        raise HepError("oversized", f"{n} bytes, HEP3 length is a 16-bit field")
    total = (data[4] << 8) | data[5]
    if total != n:
        reason = "truncated" if total > n else "bad_length"
        raise HepError(reason, f"header says {total} bytes, datagram has {n}")

    family = 0
    ip_proto = 0
    src4: str | None = None
    dst4: str | None = None
    src6: str | None = None
    dst6: str | None = None
    sport = dport = 0
    ts_sec: int | None = None
    ts_usec = 0
    proto_type = PROTO_SIP
    capture_id: int | None = None
    auth_key: bytes | None = None
    payload: bytes | None = None
    correlation_id: str | None = None
    node_name: str | None = None

    off = 6
    unpack_hdr = _chunk_hdr.unpack_from
    fixed = _FIXED_LEN
    while off < n:
        if n - off < 6:
            raise HepError("bad_chunk", f"offset {off}: {n - off} stray bytes after the chunks")
        vendor, ctype, clen = unpack_hdr(data, off)
        end = off + clen
        if clen < 6 or end > n:
            raise HepError("bad_chunk", f"offset {off}: chunk {ctype:#06x} length {clen}")
        if vendor == 0:
            want = fixed.get(ctype)
            if want is not None and clen != want:
                raise HepError(
                    "bad_chunk", f"offset {off}: chunk {ctype:#06x} is {clen} bytes, must be {want}"
                )
            v = off + 6
            if ctype == _PAYLOAD:
                payload = data[v:end]
            elif ctype == _TS_SEC:
                ts_sec = _u32.unpack_from(data, v)[0]
            elif ctype == _TS_USEC:
                ts_usec = _u32.unpack_from(data, v)[0]
            elif ctype == _SRC_IP4:
                src4 = _ip4(data[v:end])
            elif ctype == _DST_IP4:
                dst4 = _ip4(data[v:end])
            elif ctype == _SRC_PORT:
                sport = (data[v] << 8) | data[v + 1]
            elif ctype == _DST_PORT:
                dport = (data[v] << 8) | data[v + 1]
            elif ctype == _IP_FAMILY:
                family = data[v]
            elif ctype == _IP_PROTO:
                ip_proto = data[v]
            elif ctype == _PROTO_TYPE:
                proto_type = data[v]
            elif ctype == _CAPTURE_ID:
                capture_id = _u32.unpack_from(data, v)[0]
            elif ctype == _SRC_IP6:
                src6 = _ip6(data[v:end])
            elif ctype == _DST_IP6:
                dst6 = _ip6(data[v:end])
            elif ctype == _AUTH_KEY:
                auth_key = data[v:end]
            elif ctype == _CORRELATION_ID:
                correlation_id = _text(data[v:end])
            elif ctype == _NODE_NAME:
                node_name = _text(data[v:end])
            elif ctype == _PAYLOAD_GZ and payload is None:
                payload = _inflate(data[v:end])
        off = end

    if payload is None or not payload:
        raise HepError("no_payload", "no payload chunk (keepalive or non-capture packet)")
    if sip_only and proto_type != PROTO_SIP:
        raise HepError("not_sip", f"protocol type {proto_type}, only 1 (SIP) is billed")
    if ts_sec is None:
        raise HepError("no_timestamp", "no timestamp chunk; capture time is required")
    if ts_usec > 999_999:
        raise HepError("bad_chunk", f"timestamp microseconds {ts_usec} > 999999")
    # The family byte is advisory: which address chunks are present decides.
    if src4 is not None and dst4 is not None:
        src: Addr = (src4, sport)
        dst: Addr = (dst4, dport)
        family = _AF_INET
    elif src6 is not None and dst6 is not None:
        src = (src6, sport)
        dst = (dst6, dport)
        family = _AF_INET6
    else:
        raise HepError("no_address", "no complete IPv4 or IPv6 source/destination pair")
    return HepPacket(
        3, family, ip_proto, src, dst, ts_sec * 1_000_000 + ts_usec, proto_type,
        capture_id, auth_key, payload, correlation_id, node_name,
    )  # fmt: skip


def _decode_kamailio(data: bytes, n: int, sip_only: bool) -> HepPacket | None:
    """The common layout in one unpack: Kamailio's IPv4 chunks then the payload, nothing else.

    Returns None whenever anything differs (other chunks, IPv6, odd values), leaving every
    check and every error to the general chunk walk.
    """
    if _kam_match(data, 6) is None:
        return None
    if (data[_KAM_END + 4] << 8 | data[_KAM_END + 5]) != n - _KAM_END:
        return None
    _fam, ip_proto, s4, d4, sport, dport, sec, usec, ptype, cid = _KAM_VALUES.unpack_from(data, 6)
    if usec > 999_999 or (sip_only and ptype != PROTO_SIP):
        return None
    return _new_packet(
        HepPacket,
        (3, _AF_INET, ip_proto, (_ip4(s4), sport), (_ip4(d4), dport), sec * 1_000_000 + usec,
         ptype, cid, None, data[_KAM_PAYLOAD:], None, None),
    )  # fmt: skip


def _inflate(blob: bytes) -> bytes:
    # Compressed payload (0x10) is zlib or gzip; bound the output so a zip bomb costs nothing.
    try:
        d = zlib.decompressobj(wbits=47)  # 32 + 15: accept both zlib and gzip headers
        out = d.decompress(blob, MAX_PAYLOAD + 1)
    except zlib.error as exc:
        raise HepError("bad_chunk", f"compressed payload: {exc}") from None
    if len(out) > MAX_PAYLOAD or d.unconsumed_tail:
        raise HepError("oversized", f"compressed payload inflates past {MAX_PAYLOAD} bytes")
    return out


def _decode_v12(data: bytes) -> HepPacket:
    n = len(data)
    if n < 16:
        raise HepError("truncated", f"{n} bytes, a HEPv1/v2 header needs at least 16")
    version, hlen, fam, proto, sport, dport = _v12_hdr.unpack_from(data, 0)
    if fam == _AF_INET and hlen == 16:
        src: Addr = (_ip4(bytes(data[8:12])), sport)
        dst: Addr = (_ip4(bytes(data[12:16])), dport)
    elif fam == _AF_INET6 and hlen == 40:
        if n < 40:
            raise HepError("truncated", f"{n} bytes, an IPv6 HEPv{version} header needs 40")
        src = (_ip6(data[8:24]), sport)
        dst = (_ip6(data[24:40]), dport)
    else:
        raise HepError("bad_length", f"HEPv{version} header length {hlen} for family {fam}")
    off = hlen
    ts_us = 0
    capture_id: int | None = None
    if version == 2:
        if n < off + 12:
            raise HepError("truncated", f"{n} bytes, the HEPv2 time header ends at {off + 12}")
        sec, usec, cid = _v2_time.unpack_from(data, off)
        if usec > 999_999:
            raise HepError("bad_chunk", f"HEPv2 microseconds {usec} > 999999")
        ts_us = sec * 1_000_000 + usec
        capture_id = cid
        off += 12
    payload = data[off:]
    if not payload:
        raise HepError("no_payload", f"HEPv{version} datagram without payload")
    if len(payload) > MAX_PAYLOAD:
        raise HepError("oversized", f"payload of {len(payload)} bytes")
    return HepPacket(
        version, fam, proto, src, dst, ts_us, PROTO_SIP, capture_id, None, payload, None, None
    )


def stamp_v1(data: bytes, ts_us: int) -> bytes:
    """A HEPv1 datagram as HEPv2 carrying `ts_us` as its capture time; anything else as is.

    HEPv1 (Kamailio's `hep_version 1`, siptrace's default) has no time header, and every call
    time must be a capture time (SPEC §3.1), so the receiver stamps one on arrival, before the
    datagram is journalled: a restart's replay then bills it exactly like the live run did.
    A datagram that only looks like v1 is returned unchanged for `decode` to refuse.
    """
    if data[:1] != b"\x01" or not is_hep(data):
        return data
    hlen = data[1]
    if len(data) <= hlen:
        return data
    sec, usec = divmod(ts_us, 1_000_000)
    return b"\x02" + data[1:hlen] + _v2_time.pack(sec, usec, 0) + data[hlen:]


def _addr_bytes(ip: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(ip)
    return (_AF_INET if a.version == 4 else _AF_INET6), a.packed


def _chunk(ctype: int, value: bytes) -> bytes:
    return _chunk_hdr.pack(0, ctype, 6 + len(value)) + value


def encode(
    payload: bytes,
    src: Addr,
    dst: Addr,
    ts_us: int,
    *,
    capture_id: int | None = None,
    auth_key: bytes | None = None,
    correlation_id: str | None = None,
    node_name: str | None = None,
    ip_proto: int = 17,
    proto_type: int = PROTO_SIP,
    version: int = 3,
) -> bytes:
    """Build a HEP datagram (v3 by default; 2 or 1 for the legacy Kamailio header).

    Chunk order follows Kamailio's siptrace so encoded test traffic looks like the real thing.
    """
    fam, s = _addr_bytes(src[0])
    fam_d, d = _addr_bytes(dst[0])
    if fam != fam_d:
        raise ValueError(f"source {src[0]} and destination {dst[0]} are different IP families")
    sec, usec = divmod(ts_us, 1_000_000)
    if version in (1, 2):
        hlen = 16 if fam == _AF_INET else 40
        head = _v12_hdr.pack(version, hlen, fam, ip_proto, src[1], dst[1]) + s + d
        if version == 2:
            head += _v2_time.pack(sec, usec, (capture_id or 0) & 0xFFFF)
        return head + payload
    if version != 3:
        raise ValueError(f"HEP version {version}: only 1, 2 and 3 exist")
    parts = [
        _chunk(_IP_FAMILY, bytes([fam])),
        _chunk(_IP_PROTO, bytes([ip_proto])),
        _chunk(_SRC_IP4 if fam == _AF_INET else _SRC_IP6, s),
        _chunk(_DST_IP4 if fam == _AF_INET else _DST_IP6, d),
        _chunk(_SRC_PORT, _u16.pack(src[1])),
        _chunk(_DST_PORT, _u16.pack(dst[1])),
        _chunk(_TS_SEC, _u32.pack(sec)),
        _chunk(_TS_USEC, _u32.pack(usec)),
        _chunk(_PROTO_TYPE, bytes([proto_type])),
    ]
    if capture_id is not None:
        parts.append(_chunk(_CAPTURE_ID, _u32.pack(capture_id)))
    if auth_key is not None:
        parts.append(_chunk(_AUTH_KEY, auth_key))
    if correlation_id is not None:
        parts.append(_chunk(_CORRELATION_ID, correlation_id.encode()))
    if node_name is not None:
        parts.append(_chunk(_NODE_NAME, node_name.encode()))
    parts.append(_chunk(_PAYLOAD, payload))
    body = b"".join(parts)
    total = 6 + len(body)
    if total > 65535:
        raise ValueError(f"HEP3 datagram of {total} bytes does not fit the 16-bit length")
    return _MAGIC + _u16.pack(total) + body
