"""The harness itself: real Kamailio and sipp produce the HEP traffic SPEC §3.1 describes,
the recorded captures in tests/data are what their README says, and nothing outlives a test."""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from pathlib import Path

import pytest
from stack import (
    GATEWAY_HOST,
    PROXY_HOST,
    SCENARIO_PAIRS,
    TRUNK_HOST,
    HarnessError,
    HepRecorder,
    Kamailio,
    SipStack,
    SipStackFactory,
    hep3_chunks,
    sip_label,
    split_hep3,
)

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1] / "data"

# HEPv3 chunk types (sipcapture HEP spec rev 37) used by the checks below.
SRC_IP4, DST_IP4, SRC_PORT, DST_PORT, CAPTURE_ID, PAYLOAD = 0x03, 0x04, 0x07, 0x08, 0x0C, 0x0F


def chunks(datagram: bytes) -> dict[int, bytes]:
    return {ctype: value for vendor, ctype, value in hep3_chunks(datagram) if vendor == 0}


def hop(datagram: bytes) -> tuple[str, str, str]:
    """(source ip, destination ip, SIP label) of one HEPv3 datagram."""
    c = chunks(datagram)
    return socket.inet_ntoa(c[SRC_IP4]), socket.inet_ntoa(c[DST_IP4]), sip_label(datagram)


def assert_pids_gone(pids: set[int]) -> None:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    assert not alive, f"processes still present after the context exited: {alive}"


def test_one_answered_call_gives_the_twelve_packets_of_spec_3_1(sip_stack: SipStack) -> None:
    result = sip_stack.call(calls=1, rate=1, duration_ms=500)
    assert result.ok and result.successful == 1, result

    recorder = sip_stack.recorder
    recorder.wait_for(12)  # a loaded machine can pause Kamailio longer than the quiet period
    recorder.wait_quiet(0.5)
    packets = recorder.packets
    assert Counter(sip_label(p.data) for p in packets) == Counter(
        {"INVITE": 2, "100": 1, "180": 2, "200": 4, "ACK": 1, "BYE": 2}
    )
    assert len(packets) == 12
    for packet in packets:
        assert packet.data[:4] == b"HEP3"
        assert int.from_bytes(packet.data[4:6], "big") == len(packet.data)
        assert packet.source.host == PROXY_HOST
        c = chunks(packet.data)
        assert int.from_bytes(c[CAPTURE_ID], "big") == sip_stack.capture_id
        assert c[PAYLOAD].split(b" ", 1)[0] in (b"INVITE", b"ACK", b"BYE", b"SIP/2.0")
    # Both hops of the INVITE are there: trunk → proxy and proxy → gateway.
    hops = [hop(p.data) for p in packets]
    assert (TRUNK_HOST, PROXY_HOST, "INVITE") in hops
    assert (PROXY_HOST, GATEWAY_HOST, "INVITE") in hops
    assert (GATEWAY_HOST, PROXY_HOST, "200") in hops
    assert (PROXY_HOST, TRUNK_HOST, "200") in hops
    # Saved back to back, the datagrams split again on their own length fields.
    path = sip_stack.workdir / "call.hep"
    recorder.save(path)
    assert list(split_hep3(path.read_bytes())) == [p.data for p in packets]


def test_busy_gateway_puts_a_486_in_the_capture(sip_stack_factory: SipStackFactory) -> None:
    pair = SCENARIO_PAIRS["busy"]
    stack = sip_stack_factory(uas_scenario=pair.uas, capture_id=42)
    result = stack.call(calls=1, rate=1, scenario=pair.uac)
    assert result.ok, result

    stack.recorder.wait_for(sum(pair.expected(1).values()))
    stack.recorder.wait_quiet(0.5)
    packets = stack.recorder.packets
    busy = [p for p in packets if b"SIP/2.0 486 Busy Here\r\n" in p.data]
    assert [hop(p.data)[:2] for p in busy] == [
        (GATEWAY_HOST, PROXY_HOST),
        (PROXY_HOST, TRUNK_HOST),
    ]
    assert Counter(sip_label(p.data) for p in packets) == pair.expected(1)
    assert not any(b"SIP/2.0 200" in p.data for p in packets)


@pytest.mark.parametrize("name", ["cancel", "reinvite"])
def test_scenario_pairs_trace_as_documented(sip_stack_factory: SipStackFactory, name: str) -> None:
    pair = SCENARIO_PAIRS[name]
    stack = sip_stack_factory(uas_scenario=pair.uas)
    result = stack.call(calls=1, rate=1, duration_ms=300, scenario=pair.uac)
    assert result.ok and result.successful == 1, result

    stack.recorder.wait_for(sum(pair.expected(1).values()))
    stack.recorder.wait_quiet(0.5)
    labels = Counter(sip_label(p.data) for p in stack.recorder.packets)
    assert labels == pair.expected(1)
    assert labels[str(pair.sip_code)] >= 2


def test_hep_goes_to_an_external_receiver_when_given(
    sip_stack_factory: SipStackFactory, hep_recorder: HepRecorder
) -> None:
    # The shape a daemon fixture uses: Kamailio's siptrace aimed at vmgated's HEP listener.
    stack = sip_stack_factory(hep_to=hep_recorder.address, capture_id=2001)
    assert stack.call(calls=2, rate=10, duration_ms=200).ok

    hep_recorder.wait_for(24)
    hep_recorder.wait_quiet(0.5)
    assert len(hep_recorder.packets) == 24
    assert {int.from_bytes(chunks(p.data)[CAPTURE_ID], "big") for p in hep_recorder.packets} == {
        2001
    }
    with pytest.raises(HarnessError, match="external receiver"):
        _ = stack.recorder


def test_hep_version_2_is_not_hep3(sip_stack_factory: SipStackFactory) -> None:
    stack = sip_stack_factory(hep_version=2, capture_id=7)
    assert stack.call(calls=1, rate=1, duration_ms=200).ok

    stack.recorder.wait_for(12)
    stack.recorder.wait_quiet(0.5)
    packets = stack.recorder.packets
    assert len(packets) == 12
    for packet in packets:
        # HEPv2: version, header length 16 (IPv4), family, protocol 17 (UDP), then a
        # 12-byte little-endian time header (sec, usec, capture id u16, pad) before the SIP.
        version, hdr_len, family, proto = packet.data[:4]
        assert (version, hdr_len, family, proto) == (2, 16, socket.AF_INET, 17)
        _, _, capture_id = struct.unpack_from("<IIH", packet.data, 16)
        assert capture_id == 7
        assert packet.data[28:].split(b" ", 1)[0] in (b"INVITE", b"ACK", b"BYE", b"SIP/2.0")


def test_no_process_outlives_its_context(tmp_path: Path, sip_tools: dict[str, str]) -> None:
    with SipStack(tmp_path / "stack") as stack:
        assert stack.call(calls=1, rate=1, duration_ms=100).ok
        pids = stack.pids
        kamailio_workers = stack.kamailio.process.note_group()
        assert len(kamailio_workers) >= 3  # main, 2 UDP receivers, timers
        for pid in pids:
            os.kill(pid, 0)  # all running now
    assert_pids_gone(pids)


def test_a_uac_stopped_early_is_gone(sip_stack: SipStack) -> None:
    uac = sip_stack.uac_process(calls=50, rate=10, duration_ms=5000)
    with uac:
        assert sip_stack.recorder.wait_for(1, timeout=5)
        pid = uac.process.pid
    assert uac.process.popen.returncode is not None
    assert_pids_gone({pid})


def test_failure_to_start_shows_the_log(tmp_path: Path, sip_tools: dict[str, str]) -> None:
    with (
        HepRecorder() as hep,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter,
    ):
        squatter.bind((PROXY_HOST, 0))
        taken = squatter.getsockname()
        kamailio = Kamailio(
            listen=taken, hep_to=hep.address, relay_to=(GATEWAY_HOST, 5060),
            workdir=tmp_path / "kamailio",
        )  # fmt: skip
        with (
            pytest.raises(
                HarnessError, match=r"(?s)kamailio: exited .*kamailio\.log.*Address already in use"
            ),
            kamailio,
        ):
            pass
    assert_pids_gone(kamailio.process.pids_seen)


# The recorded captures (tests/data/README.md): real Kamailio output, committed.

CAPTURES = {
    "kamailio_answered.hep": ("answered", 5),
    "kamailio_busy.hep": ("busy", 3),
    "kamailio_noanswer.hep": ("noanswer", 1),
    "kamailio_cancel.hep": ("cancel", 3),
    "kamailio_reinvite.hep": ("reinvite", 2),
}


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_recorded_capture_matches_its_readme(name: str) -> None:
    pair_name, calls = CAPTURES[name]
    data = (DATA / name).read_bytes()
    assert len(data) < 100_000
    datagrams = list(split_hep3(data))
    assert Counter(sip_label(d) for d in datagrams) == SCENARIO_PAIRS[pair_name].expected(calls)
    for datagram in datagrams:
        c = chunks(datagram)
        assert int.from_bytes(c[CAPTURE_ID], "big") == 101
        assert {socket.inet_ntoa(c[SRC_IP4]), socket.inet_ntoa(c[DST_IP4])} <= {
            TRUNK_HOST,
            PROXY_HOST,
            GATEWAY_HOST,
        }
        assert int.from_bytes(c[SRC_PORT], "big") == 5060
        assert int.from_bytes(c[DST_PORT], "big") == 5060


@pytest.mark.parametrize(
    ("name", "packets", "first"), [("kamailio_answered.pcap", 60, b"HEP3"),
                                   ("kamailio_hepv2.pcap", 24, b"\x02\x10\x02\x11")]
)  # fmt: skip
def test_recorded_pcap_is_udp_to_the_hep_port(name: str, packets: int, first: bytes) -> None:
    data = (DATA / name).read_bytes()
    magic, major, minor, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    offset, count = 24, 0
    while offset < len(data):
        _, _, incl, orig = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + incl]
        assert incl == orig == len(frame)
        assert frame[12:14] == b"\x08\x00"  # IPv4
        ip = frame[14:34]
        assert sum(struct.unpack("!10H", ip)) % 0xFFFF == 0  # header checksum holds
        _, dport, udp_len, _ = struct.unpack_from("!HHHH", frame, 34)
        assert dport == 9060 and udp_len == len(frame) - 34
        assert frame[42:46] == first
        offset += 16 + incl
        count += 1
    assert count == packets
