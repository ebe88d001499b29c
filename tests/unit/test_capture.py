"""`vmgatectl replay` input: HEP files, classic pcap and pcapng, built here byte by byte."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import hep
from sip.capture import CaptureError, CaptureStats, Datagram, read_capture

SIP = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: a\r\n\r\n"
TS = 1_795_379_849_352_033


def udp(src_port: int, dst_port: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, l4: bytes, proto: int = 17, frag: int = 0) -> bytes:
    a, b = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0, a, b)
    return hdr + l4


def ipv6(src: str, dst: str, l4: bytes, nxt: int = 17) -> bytes:
    return (struct.pack(">IHBB", 6 << 28, len(l4), nxt, 64) + ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst).packed + l4)  # fmt: skip


def ether(ip: bytes, vlan: bool = False) -> bytes:
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    tag = struct.pack(">HH", 0x8100, 42) if vlan else b""
    return bytes(12) + tag + struct.pack(">H", etype) + ip


def pcap(frames: list[tuple[int, bytes]], linktype: int = 1, endian: str = "<",
         nanos: bool = False) -> bytes:  # fmt: skip
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, frame in frames:
        sec, frac = divmod(ts, 10**6)
        if nanos:
            frac *= 1000
        out += struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def block(btype: int, body: bytes, endian: str = "<") -> bytes:
    pad = body + bytes(-len(body) % 4)
    n = 12 + len(pad)
    return struct.pack(endian + "II", btype, n) + pad + struct.pack(endian + "I", n)


def pcapng(frames: list[tuple[int, bytes]], linktype: int = 1, tsresol: int | None = None,
           endian: str = "<") -> bytes:  # fmt: skip
    shb = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)
    opts = b""
    if tsresol is not None:
        opts = struct.pack(endian + "HH", 9, 1) + bytes([tsresol, 0, 0, 0]) + bytes(4)
    idb = block(1, struct.pack(endian + "HHI", linktype, 0, 65535) + opts, endian)
    out = shb + idb
    for ts, frame in frames:
        if tsresol is None:
            units = ts
        elif tsresol & 0x80:
            units = ts * 2 ** (tsresol & 0x7F) // 10**6
        else:
            units = ts * 10**tsresol // 10**6
        body = struct.pack(endian + "IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(frame),
                           len(frame)) + frame  # fmt: skip
        out += block(6, body, endian)
    return out


RAW_SIP_FRAME = ipv4("10.0.0.1", "10.0.0.2", udp(5060, 5080, SIP))
HEP_PAYLOAD = hep.encode(SIP, ("192.0.2.1", 5060), ("192.0.2.2", 5060), TS, capture_id=9)
HEP_FRAME = ipv4("127.0.0.1", "127.0.0.1", udp(40000, 12345, HEP_PAYLOAD))  # odd port on purpose


def test_concatenated_hep_file() -> None:
    blob = HEP_PAYLOAD * 3
    out = list(read_capture(blob))
    assert out == [Datagram(0, ("", 0), ("", 0), HEP_PAYLOAD, True)] * 3
    assert list(read_capture(memoryview(blob))) == out


def test_hep_file_with_truncated_tail_is_counted() -> None:
    stats = CaptureStats()
    out = list(read_capture(HEP_PAYLOAD * 2 + HEP_PAYLOAD[:20], stats))
    assert len(out) == 2 and stats.skipped == {"truncated": 1}


def test_hep_file_with_garbage_in_the_middle_raises() -> None:
    with pytest.raises(CaptureError, match=f"offset {len(HEP_PAYLOAD)}"):
        list(read_capture(HEP_PAYLOAD + b"GARBAGE-GARBAGE"))


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_classic_pcap_byte_orders_and_resolutions(endian: str, nanos: bool) -> None:
    blob = pcap([(TS, ether(RAW_SIP_FRAME)), (TS + 1, ether(HEP_FRAME))], endian=endian,
                nanos=nanos)  # fmt: skip
    a, b = read_capture(blob)
    assert a == Datagram(TS, ("10.0.0.1", 5060), ("10.0.0.2", 5080), SIP, False)
    assert b.is_hep and b.ts_us == TS + 1 and hep.decode(b.payload).src == ("192.0.2.1", 5060)


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (1, lambda ip: ether(ip, vlan=True)),
        (113, lambda ip: struct.pack(">HHH8sH", 0, 772, 6, bytes(8),
                                     0x86DD if ip[0] >> 4 == 6 else 0x0800) + ip),
        (276, lambda ip: struct.pack(">HHIHBB8s", 0x86DD if ip[0] >> 4 == 6 else 0x0800, 0, 1,
                                     772, 0, 6, bytes(8)) + ip),
        (101, lambda ip: ip),
        (228, lambda ip: ip),
        (0, lambda ip: struct.pack("<I", 10 if ip[0] >> 4 == 6 else 2) + ip),
        (108, lambda ip: struct.pack(">I", 24 if ip[0] >> 4 == 6 else 2) + ip),
    ],
)  # fmt: skip
@pytest.mark.parametrize("v6", [False, True])
def test_link_types_and_ip_versions(linktype: int, wrap: object, v6: bool) -> None:
    if v6:
        ip = ipv6("2001:db8::1", "2001:db8::2", udp(5060, 5070, SIP))
        want = Datagram(TS, ("2001:db8::1", 5060), ("2001:db8::2", 5070), SIP, False)
    else:
        ip = RAW_SIP_FRAME
        want = Datagram(TS, ("10.0.0.1", 5060), ("10.0.0.2", 5080), SIP, False)
    frame = wrap(ip)  # type: ignore[operator]
    assert list(read_capture(pcap([(TS, frame)], linktype=linktype))) == [want]
    assert list(read_capture(pcapng([(TS, frame)], linktype=linktype))) == [want]


def test_ipv6_extension_headers_are_walked() -> None:
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes
    ip = ipv6("::1", "::2", hop_by_hop + udp(1, 2, SIP), nxt=0)
    (d,) = read_capture(pcap([(TS, ether(ip))]))
    assert d.payload == SIP


@pytest.mark.parametrize(("tsresol", "ts"), [(None, TS), (9, TS), (3, TS - TS % 1000),
                                             (0x80 | 20, TS)])  # fmt: skip
def test_pcapng_timestamp_resolution(tsresol: int | None, ts: int) -> None:
    (d,) = read_capture(pcapng([(TS, ether(RAW_SIP_FRAME))], tsresol=tsresol))
    assert abs(d.ts_us - ts) <= 1


def test_pcapng_big_endian_section() -> None:
    (d,) = read_capture(pcapng([(TS, ether(RAW_SIP_FRAME))], endian=">"))
    assert d.ts_us == TS and d.payload == SIP


def test_non_udp_fragments_and_junk_frames_are_skipped_and_counted() -> None:
    frames = [
        (TS, ether(ipv4("10.0.0.1", "10.0.0.2", b"x" * 20, proto=6))),  # TCP
        (TS, ether(ipv4("10.0.0.1", "10.0.0.2", udp(1, 2, SIP), frag=0x2000))),  # MF set
        (TS, bytes(12) + b"\x08\x06" + bytes(28)),  # ARP
        (TS, b"\x00" * 5),  # short frame
        (TS, ether(ipv4("10.0.0.1", "10.0.0.2", struct.pack(">HHHH", 1, 2, 900, 0) + SIP))),
        (TS, ether(RAW_SIP_FRAME)),
    ]
    stats = CaptureStats()
    out = list(read_capture(pcap(frames), stats))
    assert [d.payload for d in out] == [SIP]
    assert stats.datagrams == 1
    assert stats.skipped == {"not_udp": 1, "fragment": 1, "not_ip": 1, "short_frame": 1,
                             "snapped": 1}  # fmt: skip


def test_truncated_last_record_ends_the_file_and_is_counted() -> None:
    blob = pcap([(TS, ether(RAW_SIP_FRAME))] * 2)
    stats = CaptureStats()
    assert len(list(read_capture(blob[:-10], stats))) == 1 and stats.skipped == {"truncated": 1}
    blob = pcapng([(TS, ether(RAW_SIP_FRAME))] * 2)
    stats = CaptureStats()
    assert len(list(read_capture(blob[:-10], stats))) == 1 and stats.skipped == {"truncated": 1}


@pytest.mark.parametrize("blob", [b"", b"JUNKJUNK", b"\xd4\xc3\xb2\xa1" + bytes(10),
                                  b"\x0a\x0d\x0d\x0a" + bytes(20)])  # fmt: skip
def test_unreadable_files_raise_capture_error(blob: bytes) -> None:
    with pytest.raises(CaptureError):
        list(read_capture(blob))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["hep", "pcap", "pcapng"]),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 500))  # fmt: skip
def test_damaged_captures_raise_only_capture_error(kind: str, flips: list[tuple[int, int]],
                                                   cut: int) -> None:  # fmt: skip
    frames = [(TS, ether(RAW_SIP_FRAME)), (TS, ether(HEP_FRAME))]
    blob = bytearray({"hep": HEP_PAYLOAD * 2, "pcap": pcap(frames),
                      "pcapng": pcapng(frames)}[kind])  # fmt: skip
    for pos, val in flips:
        blob[pos % len(blob)] = val
    try:
        for d in read_capture(bytes(blob[: len(blob) - cut % len(blob)])):
            assert isinstance(d.payload, bytes)
    except CaptureError:
        pass
