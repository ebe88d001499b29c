"""Real traffic: Kamailio 5.6 siptrace captures (tests/data/kamailio_*) through the whole ingest.

Expected times are worked out here from the packets themselves with the plain SPEC §4 rule
(start = first INVITE, answer = first 200 to it, end = first BYE; the earliest capture time of
each), so the assertions hold for any re-recording of the files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sip import hep
from sip.call import CallRecord, Disposition, Hop
from sip.capture import CaptureStats, read_capture
from sip.dialog import Tracker
from sip.message import SipMessage, parse

DATA = Path(__file__).resolve().parents[1] / "data"
TRUNK = ("127.0.0.11", 5060)
PROXY = ("127.0.0.1", 5060)
GATEWAY = ("127.0.0.21", 5060)
FAR_FUTURE = 4_000_000_000 * 10**6


def packets(name: str) -> list[tuple[hep.HepPacket, SipMessage]]:
    """Every datagram of a capture, HEP-decoded and SIP-parsed (none may fail)."""
    stats = CaptureStats()
    out = []
    for d in read_capture((DATA / name).read_bytes(), stats):
        assert d.is_hep
        pkt = hep.decode(d.payload)
        out.append((pkt, parse(pkt.payload)))
    assert stats.skipped == {} and stats.datagrams == len(out)
    return out


def track(pkts: list[tuple[hep.HepPacket, SipMessage]]) -> tuple[list[CallRecord], Tracker]:
    """Feed a capture to a tracker in file order, then let everything expire."""
    t = Tracker()
    records: list[CallRecord] = []
    for pkt, msg in pkts:
        records += t.feed(msg, pkt.ts_us, pkt.src, pkt.dst, pkt.capture_id, pkt.correlation_id)
    records += t.expire(FAR_FUTURE)
    assert len(t) == 0
    return records, t


def first(pkts: list[tuple[hep.HepPacket, SipMessage]], call_id: str, pred: object) -> int | None:
    """Earliest capture time of a packet of `call_id` matching `pred(msg)`."""
    times = [p.ts_us for p, m in pkts if m.call_id == call_id and pred(m)]  # type: ignore[operator]
    return min(times) if times else None


def expected(pkts: list[tuple[hep.HepPacket, SipMessage]], call_id: str) -> tuple[int, ...]:
    """(start, answer or 0, end or final-reply time, final code) by the SPEC §4 rule."""

    def is_initial(m: SipMessage) -> bool:
        return m.method == "INVITE" and m.to_tag is None

    start = first(pkts, call_id, is_initial)
    answer = first(pkts, call_id, lambda m: m.status == 200 and m.cseq_method == "INVITE"
                   and m.cseq_num == 1)  # fmt: skip
    bye = first(pkts, call_id, lambda m: m.method == "BYE")
    finals = [m.status for _, m in pkts
              if m.call_id == call_id and m.cseq_method == "INVITE" and m.cseq_num == 1
              and m.status >= 200]  # fmt: skip
    code = finals[0]
    final_at = first(pkts, call_id, lambda m: m.status == code and m.cseq_num == 1
                     and m.cseq_method == "INVITE")  # fmt: skip
    assert start is not None and final_at is not None
    if answer is not None:
        assert bye is not None
        return (start, answer, bye, code)
    return (start, 0, final_at, code)


def check_file(name: str, n_calls: int, per_call: int, disposition: Disposition) -> None:
    pkts = packets(name)
    assert len(pkts) == n_calls * per_call
    records, t = track(pkts)
    assert len(records) == n_calls
    assert len({r.uid for r in records}) == n_calls
    assert t.stats.calls == n_calls and t.stats.unknown_bye == 0
    for r in records:
        start, answer, end, code = expected(pkts, r.call_id)
        assert (r.start, r.answer or 0, r.end, r.sip_code) == (start, answer, end, code)
        assert r.disposition is disposition
        assert (r.caller, r.callee) == ("sipp", "service")
        assert r.hops == (Hop(TRUNK, PROXY, 101), Hop(PROXY, GATEWAY, 101))
        assert r.capture_ids == (101,)
        if answer:
            assert r.billsec == -(-(end - answer) // 1_000_000)
            assert r.billsec >= 2  # sipp -d 1500/2500: the call talks at least that long
        else:
            assert r.billsec == 0


def test_spec_12_packets_per_answered_call() -> None:
    pkts = packets("kamailio_answered.hep")
    first_call = pkts[0][1].call_id
    shape = Counter(
        m.method or f"{m.status}/{m.cseq_method}" for _, m in pkts if m.call_id == first_call
    )
    assert shape == Counter({"INVITE": 2, "100/INVITE": 1, "180/INVITE": 2, "200/INVITE": 2,
                             "ACK": 1, "BYE": 2, "200/BYE": 2})  # fmt: skip


def test_answered_calls_are_billed_once_from_real_siptrace() -> None:
    check_file("kamailio_answered.hep", 5, 12, Disposition.ANSWERED)


def test_busy_calls() -> None:
    check_file("kamailio_busy.hep", 3, 8, Disposition.BUSY)


def test_no_answer_call() -> None:
    check_file("kamailio_noanswer.hep", 1, 9, Disposition.NO_ANSWER)


def test_cancelled_calls() -> None:
    check_file("kamailio_cancel.hep", 3, 13, Disposition.CANCELLED)


def test_reinvite_is_not_a_new_call() -> None:
    check_file("kamailio_reinvite.hep", 2, 18, Disposition.ANSWERED)


def test_records_are_emitted_at_the_bye_not_at_expiry() -> None:
    pkts = packets("kamailio_answered.hep")
    t = Tracker()
    live = []
    for pkt, msg in pkts:
        live += t.feed(msg, pkt.ts_us, pkt.src, pkt.dst, pkt.capture_id, None)
    assert len(live) == 5 and len(t) == 0


def test_pcap_of_the_same_datagrams_gives_the_same_records() -> None:
    from_hep, _ = track(packets("kamailio_answered.hep"))
    pcap = [
        (p := hep.decode(d.payload), parse(p.payload))
        for d in read_capture((DATA / "kamailio_answered.pcap").read_bytes())
    ]
    from_pcap, _ = track(pcap)
    assert from_pcap == from_hep


def test_hepv2_capture_from_real_kamailio() -> None:
    datagrams = list(read_capture((DATA / "kamailio_hepv2.pcap").read_bytes()))
    pkts = []
    for d in datagrams:
        p = hep.decode(d.payload)
        assert p.version == 2 and p.capture_id == 102
        # The HEP capture time is taken just before the send; the pcap saw it arrive after.
        assert 0 <= d.ts_us - p.ts_us < 1_000_000
        pkts.append((p, parse(p.payload)))
    records, _ = track(pkts)
    assert len(records) == 2
    for r in records:
        start, answer, end, _code = expected(pkts, r.call_id)
        assert (r.start, r.answer, r.end) == (start, answer, end)
        assert r.hops == (Hop(TRUNK, PROXY, 102), Hop(PROXY, GATEWAY, 102))
        assert r.billsec >= 2


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("kamailio_*.hep")))
def test_hep_roundtrip_of_real_datagrams(name: str) -> None:
    for pkt, _msg in packets(name):
        again = hep.encode(pkt.payload, pkt.src, pkt.dst, pkt.ts_us, capture_id=pkt.capture_id)
        assert hep.decode(again) == pkt
