"""HEPv3 (sipcapture rev 37) and Kamailio HEPv1/v2 decoding: strict lengths, one typed error."""

from __future__ import annotations

import contextlib
import gzip
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import hep
from sip.hep import HepError, HepPacket, decode, encode, is_hep

SIP = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: a\r\n\r\n"
TS = 1_795_379_849_352_033


def chunk(ctype: int, value: bytes, vendor: int = 0, length: int | None = None) -> bytes:
    """One HEPv3 chunk; `length` overrides the honest length field."""
    n = 6 + len(value) if length is None else length
    return struct.pack(">HHH", vendor, ctype, n) + value


def datagram(*chunks: bytes, length: int | None = None) -> bytes:
    """A HEP3 datagram from chunks; `length` overrides the honest total length."""
    body = b"".join(chunks)
    return b"HEP3" + struct.pack(">H", 6 + len(body) if length is None else length) + body


def v4_chunks(payload: bytes = SIP) -> list[bytes]:
    """The chunks of a minimal valid IPv4 SIP capture."""
    return [
        chunk(0x01, b"\x02"),
        chunk(0x02, b"\x11"),
        chunk(0x03, bytes([10, 0, 0, 1])),
        chunk(0x04, bytes([10, 0, 0, 2])),
        chunk(0x07, struct.pack(">H", 5060)),
        chunk(0x08, struct.pack(">H", 5080)),
        chunk(0x09, struct.pack(">I", TS // 10**6)),
        chunk(0x0A, struct.pack(">I", TS % 10**6)),
        chunk(0x0B, b"\x01"),
        chunk(0x0F, payload),
    ]


def reason(data: bytes) -> str:
    with pytest.raises(HepError) as exc:
        decode(data)
    return exc.value.reason


def test_minimal_v4_datagram_decodes() -> None:
    p = decode(datagram(*v4_chunks()))
    assert p == HepPacket(3, 2, 17, ("10.0.0.1", 5060), ("10.0.0.2", 5080), TS, 1, None, None,
                          SIP, None, None)  # fmt: skip


def test_all_honoured_chunks_are_exposed() -> None:
    data = datagram(
        *v4_chunks()[:-1],
        chunk(0x0C, struct.pack(">I", 2001)),
        chunk(0x0E, b"s3cret"),
        chunk(0x11, b"corr-1"),
        chunk(0x13, b"kam-1"),
        chunk(0x12, struct.pack(">H", 7)),  # VLAN: fixed size, read and ignored
        chunk(0x0F, SIP),
    )
    p = decode(data)
    assert (p.capture_id, p.auth_key, p.correlation_id, p.node_name) == (
        2001, b"s3cret", "corr-1", "kam-1")


def test_vendor_and_unknown_chunks_are_skipped() -> None:
    data = datagram(chunk(0x0003, b"\x00" * 11, vendor=0x0004), *v4_chunks(),
                    chunk(0x0F, b"not-this", vendor=0x0021), chunk(0x0099, b"x" * 3))  # fmt: skip
    assert decode(data).payload == SIP


def test_ipv6_is_decided_by_address_chunks_not_by_family_byte() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    six = [chunk(0x05, src), chunk(0x06, dst)]
    c = v4_chunks()
    p = decode(datagram(c[0], c[1], *six, *c[4:]))  # family byte says 2
    assert p.family == 10 and p.src == ("2001:db8::1", 5060) and p.dst == ("2001:db8::2", 5080)
    lying = [chunk(0x01, b"\x0a"), *c[1:]]  # family byte says 10, addresses are v4
    assert decode(datagram(*lying)).family == 2


def test_compressed_payload_is_inflated_and_bounded() -> None:
    c = v4_chunks()[:-1]
    assert decode(datagram(*c, chunk(0x10, gzip.compress(SIP)))).payload == SIP
    assert decode(datagram(*c, chunk(0x10, zlib.compress(SIP)))).payload == SIP
    bomb = zlib.compress(b"A" * 200_000)
    assert reason(datagram(*c, chunk(0x10, bomb))) == "oversized"
    assert reason(datagram(*c, chunk(0x10, b"not deflate"))) == "bad_chunk"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"HEP", "truncated"),
        (b"HEP3\x00", "truncated"),
        (b"HEP2" + b"\x00" * 30, "bad_magic"),
        (b"INVITE sip:x SIP/2.0\r\n", "bad_magic"),
        (datagram(*v4_chunks(), length=200), "truncated"),
        (datagram(*v4_chunks(), length=100), "bad_length"),
        (datagram(*v4_chunks(), b"\x00\x00"), "bad_chunk"),  # stray bytes after the last chunk
        (datagram(*v4_chunks()[:-1], chunk(0x0F, SIP, length=5)), "bad_chunk"),
        (datagram(*v4_chunks()[:-1], chunk(0x0F, SIP, length=600)), "bad_chunk"),
        (datagram(chunk(0x03, bytes(5)), *v4_chunks()[1:]), "bad_chunk"),  # v4 address of 5
        (datagram(chunk(0x07, bytes(4)), *v4_chunks()), "bad_chunk"),  # port of 4 bytes
        (datagram(chunk(0x09, bytes(8)), *v4_chunks()), "bad_chunk"),  # 64-bit seconds
        (datagram(*v4_chunks()[:-1]), "no_payload"),
        (datagram(*v4_chunks()[:-1], chunk(0x0F, b"")), "no_payload"),
        (datagram(*v4_chunks()[:8], chunk(0x0B, b"\x05"), chunk(0x0F, SIP)), "not_sip"),
        (datagram(*v4_chunks()[:6], *v4_chunks()[7:]), "no_timestamp"),
        (datagram(*v4_chunks()[:3], *v4_chunks()[4:]), "no_address"),
        (datagram(*v4_chunks()[:7], chunk(0x0A, struct.pack(">I", 10**6)), *v4_chunks()[8:]),
         "bad_chunk"),
        (b"\x02\x10\x02\x11" + bytes(12), "truncated"),  # HEPv2 header without time header
        (b"\x02\x18\x02\x11" + bytes(40), "bad_length"),
    ],
)
def test_malformed_datagrams_are_refused_with_a_reason(data: bytes, why: str) -> None:
    assert reason(data) == why


def test_oversized_input_is_refused() -> None:
    assert reason(b"HEP3" + b"\xff\xff" + bytes(70_000)) == "oversized"


def test_not_sip_can_be_allowed_for_other_tools() -> None:
    data = datagram(*v4_chunks()[:8], chunk(0x0B, b"\x05"), chunk(0x0F, b"rtcp"))
    assert decode(data, sip_only=False).proto_type == 5


def test_kamailio_hepv2_layout() -> None:
    # hp_v=2, hp_l=16, AF_INET, UDP, ports BE, addresses, then LE sec/usec/captid + 2 pad.
    head = bytes([2, 16, 2, 17]) + struct.pack(">HH", 5060, 5060)
    addrs = bytes([127, 0, 0, 11, 127, 0, 0, 1])
    data = head + addrs + struct.pack("<IIH2x", 1795379868, 62849, 102) + SIP
    p = decode(data)
    assert (p.version, p.src, p.dst, p.ts_us, p.capture_id, p.payload) == (
        2, ("127.0.0.11", 5060), ("127.0.0.1", 5060), 1795379868062849, 102, SIP)
    assert encode(SIP, p.src, p.dst, p.ts_us, capture_id=102, version=2) == data


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("addrs", [(("10.1.2.3", 5060), ("10.3.2.1", 5070)),
                                   (("2001:db8::1", 5060), ("fe80::2", 1))])  # fmt: skip
def test_encode_decode_round_trip_every_version(
    version: int, addrs: tuple[tuple[str, int], tuple[str, int]]
) -> None:
    src, dst = addrs
    data = encode(SIP, src, dst, TS, capture_id=7, version=version)
    assert is_hep(data)
    p = decode(data)
    assert (p.version, p.src, p.dst, p.payload) == (version, src, dst, SIP)
    assert p.ts_us == (0 if version == 1 else TS)
    assert p.capture_id == (None if version == 1 else 7)


def test_is_hep_sniffs_headers_only() -> None:
    assert is_hep(b"HEP3")
    assert not is_hep(SIP)
    assert not is_hep(b"")
    assert not is_hep(b"\x02\x10\x02")


_addr4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
_addr6 = st.tuples(st.ip_addresses(v=6).map(lambda a: a.compressed), st.integers(0, 65535))


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=2000),
    st.one_of(st.tuples(_addr4, _addr4), st.tuples(_addr6, _addr6)),
    st.integers(0, 2**32 * 10**6 - 1),
    st.none() | st.integers(0, 2**32 - 1),
    st.none() | st.binary(max_size=40),
    st.none() | st.text(max_size=40),
    st.none() | st.text(max_size=20),
)
def test_v3_round_trip(payload: bytes, addrs: tuple[tuple[str, int], tuple[str, int]], ts: int,
                      cid: int | None,
                       key: bytes | None, corr: str | None, node: str | None) -> None:  # fmt: skip
    src, dst = addrs
    data = encode(payload, src, dst, ts, capture_id=cid, auth_key=key, correlation_id=corr,
                  node_name=node)  # fmt: skip
    p = decode(data)
    assert (p.src, p.dst, p.ts_us, p.capture_id, p.payload) == (src, dst, ts, cid, payload)
    assert (p.auth_key, p.correlation_id, p.node_name) == (key, corr, node)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_hep_error(data: bytes) -> None:
    for candidate in (data, b"HEP3" + struct.pack(">H", len(data) + 6) + data, b"\x02" + data):
        with contextlib.suppress(HepError):
            decode(candidate)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_datagrams_raise_only_hep_error(flips: list[tuple[int, int]]) -> None:
    buf = bytearray(datagram(*v4_chunks()[:-1], chunk(0x0C, bytes(4)), chunk(0x11, b"c"),
                             chunk(0x0F, SIP)))  # fmt: skip
    for pos, val in flips:
        buf[pos % len(buf)] = val
    try:
        p = decode(bytes(buf))
    except HepError:
        return
    assert isinstance(p.payload, bytes) and p.ts_us >= 0


def test_reasons_are_short_metric_labels() -> None:
    labels = {"truncated", "bad_magic", "bad_length", "bad_chunk", "no_payload", "not_sip",
              "oversized", "no_timestamp", "no_address"}  # fmt: skip
    src = Path(hep.__file__).read_text(encoding="utf-8")
    assert set(re.findall(r'HepError\(\s*"([a-z_]+)"', src)) <= labels


KAMAILIO_LAYOUT = encode(SIP, ("127.0.0.11", 5060), ("127.0.0.1", 5060), TS, capture_id=101)


def _outcome(fn: object, data: bytes) -> object:
    try:
        return fn(data)  # type: ignore[operator]
    except HepError as exc:
        return exc.reason


def test_kamailio_layout_fast_path_agrees_with_the_chunk_walk() -> None:
    assert decode(KAMAILIO_LAYOUT) == hep._decode_v3(KAMAILIO_LAYOUT, True)
    assert decode(KAMAILIO_LAYOUT).capture_id == 101


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=4))
def test_fast_path_and_chunk_walk_agree_on_mutations(flips: list[tuple[int, int]]) -> None:
    buf = bytearray(KAMAILIO_LAYOUT)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    data = bytes(buf)
    if data[:4] != b"HEP3":
        return
    assert _outcome(decode, data) == _outcome(lambda d: hep._decode_v3(d, True), data)


@pytest.mark.parametrize(
    "addrs", [(("10.0.0.1", 5060), ("10.0.0.2", 5080)), (("2001:db8::1", 5060), ("::1", 5080))]
)
def test_stamp_v1_gives_a_v1_datagram_the_receive_time_as_v2(
    addrs: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    from sip.hep import stamp_v1

    src, dst = addrs
    v1 = encode(SIP, src, dst, TS, version=1)
    p = decode(stamp_v1(v1, TS + 123))
    assert (p.version, p.src, p.dst, p.ts_us, p.payload) == (2, src, dst, TS + 123, SIP)
    # Anything that is not a well-formed v1 header passes through for decode to judge.
    v3 = encode(SIP, src, dst, TS)
    for other in (v3, encode(SIP, src, dst, TS, version=2), b"\x01\x10", b"", b"\x01" * 15):
        assert stamp_v1(other, TS) == other
