"""Writes the bad-input corpus of tests/corpus/: one datagram per file (SPEC §3.3).

    /work/venv/bin/python tests/corpus/make_corpus.py          # (re)write the .bin files
    /work/venv/bin/python tests/corpus/make_corpus.py --check  # exit 1 if a file differs

The HEP and SIP bytes are packed here by hand (struct, no project code), so the corpus does not
depend on the decoder it tests. Output is deterministic (fixed times, seeded random bytes).
Each case's expected `vmgated_packets_total{input,result}` label and how it is sent are in
tests/e2e/test_e2e_bad_input.py (CASES); every HEPv3 case except the two auth cases carries
AUTH_KEY, so it is dropped for its own fault and not for the key.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
AUTH_KEY = b"e2e-corpus-key"
TS_SEC = 1795379849  # 2026-11-22, the recording date of tests/data
CAPTURE_ID = 2001
TRUNK = ("127.0.0.11", 5060)
PROXY = ("127.0.0.1", 5060)

INVITE = (
    "INVITE sip:442071234567@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bK-corpus-1\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Corpus" <sip:15551230000@127.0.0.11>;tag=corpus-from\r\n'
    "To: <sip:442071234567@127.0.0.1>\r\n"
    "Call-ID: corpus-{name}@127.0.0.11\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:15551230000@127.0.0.11:5060>\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)


def invite(name: str) -> bytes:
    """A well-formed INVITE with a Call-ID of its own."""
    return INVITE.format(name=name).encode()


def chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    """One HEPv3 chunk: vendor, type, length (header included), value; big-endian."""
    return struct.pack("!HHH", vendor, ctype, 6 + len(value)) + value


def hep3_chunks(payload: bytes | None, *, key: bytes | None = AUTH_KEY, ts: bool = True,
                addresses: bool = True, proto_type: int = 1) -> list[bytes]:
    """The chunks Kamailio's siptrace writes (IPv4), then auth key and payload."""
    parts = [chunk(0x01, b"\x02"), chunk(0x02, b"\x11")]
    if addresses:
        parts += [chunk(0x03, socket.inet_aton(TRUNK[0])), chunk(0x04, socket.inet_aton(PROXY[0]))]
    parts += [chunk(0x07, struct.pack("!H", TRUNK[1])), chunk(0x08, struct.pack("!H", PROXY[1]))]
    if ts:
        parts += [chunk(0x09, struct.pack("!I", TS_SEC)), chunk(0x0A, struct.pack("!I", 250_000))]
    parts += [chunk(0x0B, bytes([proto_type])), chunk(0x0C, struct.pack("!I", CAPTURE_ID))]
    if key is not None:
        parts.append(chunk(0x0E, key))
    if payload is not None:
        parts.append(chunk(0x0F, payload))
    return parts


def hep3(parts: list[bytes], total: int | None = None) -> bytes:
    """HEP3 header (magic, total length) over the chunks; `total` overrides the length field."""
    body = b"".join(parts)
    return b"HEP3" + struct.pack("!H", 6 + len(body) if total is None else total) + body


def sip_hep(payload: bytes, **kwargs: object) -> bytes:
    """A correct HEPv3 datagram carrying `payload` as SIP."""
    return hep3(hep3_chunks(payload, **kwargs))  # type: ignore[arg-type]


def hepv2(hlen: int, time_header: bytes, payload: bytes) -> bytes:
    """HEPv2 as Kamailio writes it: 16-byte IPv4 header, little-endian time header, payload."""
    head = struct.pack("!BBBBHH", 2, hlen, 2, 17, TRUNK[1], PROXY[1])
    head += socket.inet_aton(TRUNK[0]) + socket.inet_aton(PROXY[0])
    return head + time_header + payload


def _cases() -> dict[str, Callable[[], bytes]]:
    rnd = random.Random(20261122)
    good = sip_hep(invite("truncated"))
    oversized_pad = "X-Pad: " + "p" * 65_000 + "\r\n"
    return {
        # Not HEP at all: random bytes (first byte 0xff: not HEP3, not a v1/v2 version).
        "random_bytes.bin": lambda: b"\xff" + rnd.randbytes(300),
        # HEPv3 framing faults.
        "hep3_3_bytes.bin": lambda: b"HEP",
        "hep3_truncated.bin": lambda: good[: len(good) * 3 // 5],
        "hep3_total_length_too_small.bin": lambda: hep3(
            hep3_chunks(invite("short-total")), total=50),
        "hep3_zero_length_chunk.bin": lambda: hep3(
            [*hep3_chunks(None), struct.pack("!HHH", 0, 0x13, 0), chunk(0x0F, invite("zero"))]),
        "hep3_chunk_past_end.bin": lambda: hep3(
            [*hep3_chunks(None), struct.pack("!HHH", 0, 0x0F, 6 + 4000) + invite("past-end")]),
        "hep3_stray_bytes_after_chunks.bin": lambda: hep3(
            [*hep3_chunks(invite("stray")), b"\x00\x00\x00"]),
        "hep3_fixed_chunk_wrong_size.bin": lambda: hep3(
            [chunk(0x07, b"\x13\xc4\x00"), *hep3_chunks(invite("fixed-size"))]),
        "hep3_no_payload.bin": lambda: hep3(hep3_chunks(None)),
        "hep3_no_timestamp.bin": lambda: sip_hep(invite("no-ts"), ts=False),
        "hep3_no_addresses.bin": lambda: sip_hep(invite("no-addr"), addresses=False),
        "hep3_rtcp_not_sip.bin": lambda: sip_hep(b"\x81\xc8\x00\x0c" + rnd.randbytes(48),
                                                 proto_type=5),
        # Oversized: a compressed payload (chunk 0x10) inflating to 1 MB, past any datagram.
        "hep3_gzip_bomb.bin": lambda: hep3(
            [*hep3_chunks(None), chunk(0x10, zlib.compress(b"\0" * 1_000_000, 9))]),
        # Oversized: 65,520 bytes, larger than any UDP payload over IPv4 (65,507): sent over
        # IPv6 loopback, where UDP carries up to 65,527 (see the test).
        "hep3_oversized_65520.bin": lambda: _exact(sip_hep(
            invite("oversized").replace(b"\r\n\r\n", ("\r\n" + oversized_pad).encode()
                                        + b"\r\n")), 65_520),
        # Authentication and source.
        "hep3_no_auth_key.bin": lambda: sip_hep(invite("no-key"), key=None),
        "hep3_wrong_auth_key.bin": lambda: sip_hep(invite("wrong-key"), key=b"not-the-key"),
        "hep3_from_disallowed_source.bin": lambda: sip_hep(invite("bad-source")),
        # SIP faults inside correct HEP.
        "sip_garbage_start_line.bin": lambda: sip_hep(
            b"HELLO THERE\r\n" + invite("garbage").split(b"\r\n", 1)[1]),
        "sip_non_utf8_method.bin": lambda: sip_hep(b"INV\xc3\x28TE" + invite("non-utf8")[6:]),
        "sip_utf16.bin": lambda: sip_hep(invite("utf16").decode().encode("utf-16")),
        "sip_no_call_id.bin": lambda: sip_hep(
            invite("x").replace(b"Call-ID: corpus-x@127.0.0.11\r\n", b"")),
        "sip_bad_cseq.bin": lambda: sip_hep(invite("cseq").replace(b"CSeq: 1 INVITE",
                                                                     b"CSeq: one INVITE")),
        "sip_short_body.bin": lambda: sip_hep(invite("body").replace(
            b"Content-Length: 0\r\n\r\n", b"Content-Length: 500\r\n\r\nv=0\r\n")),
        "sip_bad_status.bin": lambda: sip_hep(
            b"SIP/2.0 999 Nope\r\n" + invite("status").split(b"\r\n", 1)[1]),
        # Accepted on purpose: Latin-1 bytes in a display name do not make a call unbillable.
        "sip_latin1_display_name.bin": lambda: sip_hep(
            invite("latin1").replace(b'"Corpus"', b'"Jos\xe9 Mu\xf1oz"')),
        # HEPv1/v2 garbage.
        "hepv2_bad_header_length.bin": lambda: hepv2(20, b"", invite("v2-hlen")),
        "hepv2_truncated_time_header.bin": lambda: hepv2(16, b"\x01\x02\x03\x04", b""),
        "hepv1_3_bytes.bin": lambda: b"\x01\x10\x02",
    }


def _exact(datagram: bytes, size: int) -> bytes:
    """Pad the X-Pad header so the datagram is exactly `size` bytes (length field fixed up)."""
    missing = size - len(datagram)
    assert missing >= 0, f"{len(datagram)} bytes, wanted {size}"
    padded = datagram.replace(b"X-Pad: ", b"X-Pad: " + b"p" * missing, 1)
    pos = padded.rindex(b"\x00\x00\x00\x0f")  # the payload chunk: fix its length and the total
    plen = int.from_bytes(padded[pos + 4 : pos + 6], "big") + missing
    padded = padded[: pos + 4] + plen.to_bytes(2, "big") + padded[pos + 6 :]
    return padded[:4] + size.to_bytes(2, "big") + padded[6:]


def corpus() -> dict[str, bytes]:
    """File name → datagram bytes, in a stable order."""
    return {name: make() for name, make in _cases().items()}


def main(argv: list[str]) -> int:
    """Write the corpus, or with --check compare it with the files on disk."""
    check = "--check" in argv
    bad = 0
    for name, data in corpus().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_bytes() != data:
                print(f"{path}: differs from make_corpus.py", file=sys.stderr)
                bad += 1
        else:
            path.write_bytes(data)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
