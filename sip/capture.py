"""Capture files to datagrams: concatenated HEPv3, classic pcap and pcapng (bytes in, no I/O).

What comes out is every UDP datagram (IPv4 or IPv6) with its capture time and addresses from
the IP/UDP headers, and whether its payload looks like HEP (sniffed by header, whatever the
port). For a file of concatenated HEPv3 datagrams there is no outer envelope: `ts_us` is 0 and
`src`/`dst` are ``("", 0)``; the HEP header inside carries the real ones.

Error policy, chosen so a replay bills everything that is readable:

- a file that is none of the three formats, or whose file header is damaged, raises
  `CaptureError` before anything is yielded;
- a record cut short at the end of the file (a capture interrupted mid-write) ends the
  iteration and is counted as ``truncated`` in `CaptureStats`;
- a record whose framing is impossible mid-file (a block length that runs backwards or past the
  end, a HEP length under 6) raises `CaptureError` with the byte offset, since nothing after it
  can be trusted to be aligned;
- frames that are readable but not UDP over IP — ARP, TCP, fragments, other link types, bad IP
  headers — are skipped and counted by reason.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from sip.call import Addr
from sip.hep import is_hep

__all__ = ["CaptureError", "CaptureStats", "Datagram", "read_capture"]

_NO_ADDR: Addr = ("", 0)
# What the readers walk: bytes, or a file mapped by the caller (read without a copy, so a
# capture of gigabytes costs page cache, not heap; slices of either are bytes).
_Buf = bytes | mmap.mmap

# pcap link types (tcpdump.org/linktypes.html)
_LT_NULL = 0
_LT_ETHERNET = 1
_LT_RAW = 101
_LT_LOOP = 108
_LT_SLL = 113
_LT_IPV4 = 228
_LT_IPV6 = 229
_LT_SLL2 = 276
_LT_RAW_ALIASES = (12, 14)  # DLT_RAW on some BSDs, written as-is by old libpcap

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: walk past them
_IPV6_FRAG = 44
_UDP = 17


class CaptureError(ValueError):
    """A capture file that cannot be read (further); the message gives the byte offset."""


@dataclass(slots=True)
class CaptureStats:
    """What was read and what was skipped, by reason (``not_udp``, ``fragment``, ...)."""

    datagrams: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count one frame or record passed over."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class Datagram(NamedTuple):
    """One UDP datagram from a capture file."""

    ts_us: int  # capture time, EpochUs (0 in a bare HEP file)
    src: Addr
    dst: Addr
    payload: bytes
    is_hep: bool


def read_capture(
    data: bytes | memoryview | mmap.mmap, stats: CaptureStats | None = None
) -> Iterator[Datagram]:
    """Iterate the UDP datagrams of a HEP, pcap or pcapng capture held in memory.

    The format is recognised by its first four bytes. See the module doc for what raises and
    what is skipped; pass `stats` to learn the counts. An `mmap` of the file is read in
    place (only a `memoryview` is copied first).
    """
    buf: _Buf = data if isinstance(data, (bytes, mmap.mmap)) else bytes(data)
    st = stats if stats is not None else CaptureStats()
    head = buf[:4]
    if head == b"HEP3":
        return _read_hep(buf, st)
    if head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return _read_pcap(buf, st)
    if head == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(buf, st)
    raise CaptureError(
        f"offset 0: starts with {head!r}; expected a pcap, pcapng or HEP3 file"
    )


def _read_hep(buf: _Buf, st: CaptureStats) -> Iterator[Datagram]:
    off = 0
    n = len(buf)
    while off < n:
        if n - off < 6:
            st.skip("truncated")
            return
        if buf[off : off + 4] != b"HEP3":
            raise CaptureError(f"offset {off}: expected b'HEP3', found {buf[off:off + 4]!r}")
        length = (buf[off + 4] << 8) | buf[off + 5]
        if length < 6:
            raise CaptureError(f"offset {off}: HEP3 length {length} is under 6")
        if off + length > n:
            st.skip("truncated")
            return
        st.datagrams += 1
        yield Datagram(0, _NO_ADDR, _NO_ADDR, buf[off : off + length], True)
        off += length


def _read_pcap(buf: _Buf, st: CaptureStats) -> Iterator[Datagram]:
    if len(buf) < 24:
        raise CaptureError(f"offset 0: pcap header needs 24 bytes, file has {len(buf)}")
    magic = buf[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII")
    off = 24
    n = len(buf)
    while off < n:
        if n - off < 16:
            st.skip("truncated")
            return
        sec, frac, incl, _orig = rec.unpack_from(buf, off)
        off += 16
        if incl > 262144:
            raise CaptureError(f"offset {off - 16}: record length {incl} is not plausible")
        if off + incl > n:
            st.skip("truncated")
            return
        ts = sec * 1_000_000 + (frac // 1000 if nanos else frac)
        d = _frame(linktype, buf[off : off + incl], ts, endian, st)
        off += incl
        if d is not None:
            yield d


def _read_pcapng(buf: _Buf, st: CaptureStats) -> Iterator[Datagram]:
    n = len(buf)
    off = 0
    endian = "<"
    links: list[tuple[int, int, bool]] = []  # (linktype, tsresol exponent, base-2?)
    while off < n:
        if n - off < 12:
            st.skip("truncated")
            return
        if buf[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            bom = buf[off + 8 : off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise CaptureError(f"offset {off}: pcapng section header without byte-order mark")
            links = []  # interface ids are per section
        btype, blen = struct.unpack_from(endian + "II", buf, off)
        if blen < 12 or blen % 4:
            raise CaptureError(f"offset {off}: pcapng block length {blen}")
        if off + blen > n:
            st.skip("truncated")
            return
        body = buf[off + 8 : off + blen - 4]
        off += blen
        if btype == 1 and len(body) >= 8:  # Interface Description Block
            lt = struct.unpack_from(endian + "H", body, 0)[0]
            links.append((lt, *_tsresol(body[8:], endian)))
        elif btype == 6 and len(body) >= 20:  # Enhanced Packet Block
            ifid, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            if ifid >= len(links) or 20 + cap > len(body):
                st.skip("bad_block")
                continue
            lt, exp, base2 = links[ifid]
            raw = (hi << 32) | lo
            ts = (raw * 1_000_000 >> exp) if base2 else raw * 1_000_000 // 10**exp
            d = _frame(lt, body[20 : 20 + cap], ts, endian, st)
            if d is not None:
                yield d
        elif btype in (3, 2):  # Simple / obsolete Packet Block: no usable timestamp
            st.skip("no_timestamp")


def _tsresol(opts: bytes, endian: str) -> tuple[int, bool]:
    """The interface's timestamp resolution from IDB options (default 10^-6)."""
    off = 0
    while off + 4 <= len(opts):
        code, length = struct.unpack_from(endian + "HH", opts, off)
        if code == 0:
            break
        if code == 9 and length == 1 and off + 5 <= len(opts):
            v = opts[off + 4]
            return (v & 0x7F, bool(v & 0x80))
        off += 4 + ((length + 3) & ~3)
    return (6, False)


def _frame(
    linktype: int, frame: bytes, ts: int, endian: str, st: CaptureStats
) -> Datagram | None:
    """Strip the link layer and hand the IP packet on; None (counted) if not UDP over IP."""
    if linktype == _LT_ETHERNET:
        if len(frame) < 14:
            st.skip("short_frame")
            return None
        etype = (frame[12] << 8) | frame[13]
        off = 14
        while etype in _ETH_VLAN and len(frame) >= off + 4:
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        return _ip_by_ethertype(etype, frame[off:], ts, st)
    if linktype == _LT_SLL:
        if len(frame) < 16:
            st.skip("short_frame")
            return None
        return _ip_by_ethertype((frame[14] << 8) | frame[15], frame[16:], ts, st)
    if linktype == _LT_SLL2:
        if len(frame) < 20:
            st.skip("short_frame")
            return None
        return _ip_by_ethertype((frame[0] << 8) | frame[1], frame[20:], ts, st)
    if linktype in (_LT_RAW, _LT_IPV4, _LT_IPV6, *_LT_RAW_ALIASES):
        return _ip(frame, ts, st)
    if linktype in (_LT_NULL, _LT_LOOP):
        if len(frame) < 4:
            st.skip("short_frame")
            return None
        # NULL stores the address family in the writer's byte order, LOOP in network order;
        # a value that only makes sense the other way round was written by the other one.
        little = linktype == _LT_NULL and endian == "<"
        fam = int.from_bytes(frame[:4], "little" if little else "big")
        if fam > 0xFF:
            fam = int.from_bytes(frame[:4], "big" if little else "little")
        if fam == 2:
            return _ip(frame[4:], ts, st)
        if fam in (10, 24, 28, 30):  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS
            return _ip(frame[4:], ts, st)
        st.skip("not_ip")
        return None
    st.skip(f"linktype_{linktype}")
    return None


def _ip_by_ethertype(etype: int, pkt: bytes, ts: int, st: CaptureStats) -> Datagram | None:
    if etype in (_ETH_IPV4, _ETH_IPV6):
        return _ip(pkt, ts, st)
    st.skip("not_ip")
    return None


def _ip(pkt: bytes, ts: int, st: CaptureStats) -> Datagram | None:
    if not pkt:
        st.skip("short_frame")
        return None
    ver = pkt[0] >> 4
    if ver == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl:
            st.skip("bad_ip")
            return None
        total = (pkt[2] << 8) | pkt[3]
        if total < ihl:
            st.skip("bad_ip")
            return None
        if ((pkt[6] & 0x3F) << 8) | pkt[7]:  # more-fragments flag or a fragment offset
            st.skip("fragment")
            return None
        if pkt[9] != _UDP:
            st.skip("not_udp")
            return None
        src_ip = f"{pkt[12]}.{pkt[13]}.{pkt[14]}.{pkt[15]}"
        dst_ip = f"{pkt[16]}.{pkt[17]}.{pkt[18]}.{pkt[19]}"
        return _udp(pkt[ihl : min(total, len(pkt))], src_ip, dst_ip, ts, st)
    if ver == 6:
        if len(pkt) < 40:
            st.skip("bad_ip")
            return None
        nxt = pkt[6]
        end = 40 + ((pkt[4] << 8) | pkt[5])
        off = 40
        while nxt in _IPV6_EXT and len(pkt) >= off + 8:
            nxt = pkt[off]
            off += (pkt[off + 1] + 1) * 8
        if nxt == _IPV6_FRAG:
            st.skip("fragment")
            return None
        if nxt != _UDP:
            st.skip("not_udp")
            return None
        src_ip = ipaddress.IPv6Address(pkt[8:24]).compressed
        dst_ip = ipaddress.IPv6Address(pkt[24:40]).compressed
        return _udp(pkt[off : min(end, len(pkt))], src_ip, dst_ip, ts, st)
    st.skip("not_ip")
    return None


def _udp(seg: bytes, src_ip: str, dst_ip: str, ts: int, st: CaptureStats) -> Datagram | None:
    if len(seg) < 8:
        st.skip("bad_udp")
        return None
    ulen = (seg[4] << 8) | seg[5]
    if ulen < 8 or ulen > len(seg):
        # A snaplen-cut datagram cannot be trusted to hold a whole SIP message.
        st.skip("bad_udp" if ulen < 8 else "snapped")
        return None
    payload = seg[8:ulen]
    st.datagrams += 1
    return Datagram(
        ts,
        (src_ip, (seg[0] << 8) | seg[1]),
        (dst_ip, (seg[2] << 8) | seg[3]),
        payload,
        is_hep(payload),
    )
