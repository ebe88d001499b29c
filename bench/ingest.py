"""HEP ingest throughput: decode + parse + track, beside two baselines measured in the same run.

    /work/venv/bin/python bench/ingest.py [--calls N] [--repeat R] [--profile]

The stream is Kamailio-shaped (SPEC §3.1, as in tests/data/kamailio_answered.hep): 12 HEPv3
packets per call — INVITE×2, 100, 180×2, 200×2, ACK, BYE×2, 200×2 — with sipp-like messages
(SDP bodies on INVITE and 200), built with `sip.hep.encode`; calls overlap as at 50 calls/s.

Rows printed (packets/s, best of R runs, one core):
- baseline "bare HEP chunk walk": `struct.unpack_from` over every chunk, no objects built;
- baseline "sipmessage parse": the PyPI `sipmessage` parser on the same SIP payloads, reading
  the same fields (Call-ID, CSeq, From/To tags), or a regex split if it is not installed;
- sip.hep.decode alone, sip.message.parse alone, and the full ingest (decode + parse + feed,
  with `expire` once per simulated second).
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sip import hep, message
from sip.dialog import Tracker

TRUNK = ("10.1.0.11", 5060)
PROXY = ("10.1.0.1", 5060)
GW = ("10.1.0.21", 5060)
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 10.1.0.11\r\ns=-\r\nc=IN IP4 10.1.0.11\r\n"
       b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")  # fmt: skip


def _msg(start: str, hdrs: list[str], body: bytes = b"") -> bytes:
    lines = [start, *hdrs]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def call_packets(i: int, t0: int) -> list[bytes]:
    """The 12 HEP datagrams of one answered call, as Kamailio's siptrace sends them."""
    cid = f"{i}-4242@10.1.0.11"
    ftag = f"4242SIPpTag00{i}"
    ttag = f"{i}SIPpTag01{i}"
    fr = f"From: sipp <sip:sipp@10.1.0.11:5060>;tag={ftag}"
    to0 = "To: <sip:+37410123456@10.1.0.1:5060>"
    to1 = f"{to0};tag={ttag}"
    via = f"Via: SIP/2.0/UDP 10.1.0.11:5060;branch=z9hG4bK-4242-{i}-0"
    via2 = f"Via: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKcydzigwkX.{i}"
    rr = "Record-Route: <sip:10.1.0.1;lr>"
    common = [f"Call-ID: {cid}"]
    inv = _msg("INVITE sip:+37410123456@10.1.0.1:5060 SIP/2.0",
               [via, fr, to0, *common, "CSeq: 1 INVITE", "Contact: sip:sipp@10.1.0.11:5060",
                "Max-Forwards: 70", "Subject: Performance Test"], SDP)  # fmt: skip
    inv2 = _msg("INVITE sip:+37410123456@10.1.0.21:5060 SIP/2.0",
                [rr, via2, via, fr, to0, *common, "CSeq: 1 INVITE",
                 "Contact: sip:sipp@10.1.0.11:5060", "Max-Forwards: 69",
                 "Subject: Performance Test"], SDP)  # fmt: skip
    server = "Server: kamailio (5.6.3 (x86_64/linux))"
    contact = "Contact: <sip:10.1.0.21:5060;transport=UDP>"
    trying = _msg("SIP/2.0 100 trying -- your call is important to us",
                  [via, fr, to0, *common, "CSeq: 1 INVITE", server])  # fmt: skip
    ring = _msg("SIP/2.0 180 Ringing", [rr, via2, via, fr, to1, *common, "CSeq: 1 INVITE", contact])
    ring2 = _msg("SIP/2.0 180 Ringing", [rr, via, fr, to1, *common, "CSeq: 1 INVITE", contact])
    ok = _msg("SIP/2.0 200 OK", [rr, via2, via, fr, to1, *common, "CSeq: 1 INVITE", contact], SDP)
    ok2 = _msg("SIP/2.0 200 OK", [rr, via, fr, to1, *common, "CSeq: 1 INVITE", contact], SDP)
    vb = f"Via: SIP/2.0/UDP 10.1.0.11:5060;branch=z9hG4bK-4242-{i}-5"
    vb2 = f"Via: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKcydzigwkX.{i}.5"
    route = "Route: <sip:10.1.0.1;lr>"
    ack = _msg("ACK sip:10.1.0.21:5060;transport=UDP SIP/2.0",
               [vb, route, fr, to1, *common, "CSeq: 1 ACK", "Max-Forwards: 70"])  # fmt: skip
    bye = _msg("BYE sip:10.1.0.21:5060;transport=UDP SIP/2.0",
               [vb, route, fr, to1, *common, "CSeq: 2 BYE", "Max-Forwards: 70"])  # fmt: skip
    bye2 = _msg("BYE sip:10.1.0.21:5060;transport=UDP SIP/2.0",
                [vb2, vb, fr, to1, *common, "CSeq: 2 BYE", "Max-Forwards: 69"])  # fmt: skip
    byeok = _msg("SIP/2.0 200 OK", [vb2, vb, fr, to1, *common, "CSeq: 2 BYE"])
    byeok2 = _msg("SIP/2.0 200 OK", [vb, fr, to1, *common, "CSeq: 2 BYE"])
    ms = 1000
    seq = [
        (inv, TRUNK, PROXY, 0), (trying, PROXY, TRUNK, 1 * ms), (inv2, PROXY, GW, 1 * ms),
        (ring, GW, PROXY, 3 * ms), (ring2, PROXY, TRUNK, 3 * ms), (ok, GW, PROXY, 4 * ms),
        (ok2, PROXY, TRUNK, 4 * ms), (ack, TRUNK, PROXY, 5 * ms),
        (bye, TRUNK, PROXY, 2_505 * ms), (bye2, PROXY, GW, 2_506 * ms),
        (byeok, GW, PROXY, 2_507 * ms), (byeok2, PROXY, TRUNK, 2_507 * ms),
    ]  # fmt: skip
    return [hep.encode(p, s, d, t0 + dt, capture_id=101) for p, s, d, dt in seq]


def stream(calls: int) -> list[bytes]:
    """`calls` overlapping calls (one new call every 20 ms), packets in capture-time order."""
    t0 = 1_795_379_849_000_000
    timed = []
    for i in range(calls):
        start = t0 + i * 20_000
        for pkt in call_packets(i, start):
            timed.append((hep.decode(pkt).ts_us, len(timed), pkt))
    timed.sort()
    return [p for _, _, p in timed]


_chunk = struct.Struct(">HHH")


def bare_walk(packets: list[bytes]) -> int:
    """Baseline: validate the header and step through every chunk, building nothing."""
    n = 0
    unpack = _chunk.unpack_from
    for data in packets:
        total = len(data)
        if data[:4] != b"HEP3" or (data[4] << 8 | data[5]) != total:
            continue
        off = 6
        while off < total:
            _v, _t, ln = unpack(data, off)
            off += ln
        n += 1
    return n


def make_sipmessage_baseline() -> tuple[str, Callable[[list[bytes]], int]]:
    try:
        import sipmessage  # type: ignore[import-not-found]
    except ImportError:
        rx = re.compile(rb"^(Call-ID|CSeq|From|To):\s*(.*?)\r?$", re.M | re.I)

        def regex_split(payloads: list[bytes]) -> int:
            for p in payloads:
                dict(rx.findall(p))
            return len(payloads)

        return "regex split (sipmessage not installed)", regex_split

    def sipmessage_parse(payloads: list[bytes]) -> int:
        parse = sipmessage.Message.parse
        for p in payloads:
            m = parse(p)
            _ = (m.call_id, m.cseq, m.from_address.parameters.get("tag"),
                 m.to_address.parameters.get("tag"))  # fmt: skip
        return len(payloads)

    return f"sipmessage {sipmessage.__version__} parse + billing fields", sipmessage_parse


def ingest(packets: list[bytes]) -> int:
    """The daemon's per-packet path: decode, parse, track (expire once a simulated second)."""
    decode, parse = hep.decode, message.parse
    tracker = Tracker()
    feed = tracker.feed
    records = 0
    next_expire = 0
    for data in packets:
        pkt = decode(data)
        msg = parse(pkt.payload)
        records += len(feed(msg, pkt.ts_us, pkt.src, pkt.dst, pkt.capture_id, pkt.correlation_id))
        if pkt.ts_us >= next_expire:
            records += len(tracker.expire(pkt.ts_us))
            next_expire = pkt.ts_us + 1_000_000
    records += len(tracker.expire(1 << 62))
    return records


def parse_all(payloads: list[bytes]) -> int:
    """`sip.message.parse` alone, over the same payloads as the sipmessage baseline."""
    parse = message.parse
    for p in payloads:
        parse(p)
    return len(payloads)


def best(fn: Callable[[list[bytes]], object], data: list[bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t)
    return len(data) / min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="pyinstrument the full ingest once")
    args = ap.parse_args()

    packets = stream(args.calls)
    payloads = [hep.decode(p).payload for p in packets]
    assert ingest(packets) == args.calls, "every call must be billed exactly once"

    if args.profile:
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0002)
        prof.start()
        ingest(packets)
        prof.stop()
        print(prof.output_text(unicode=False, color=False, show_all=False))
        return

    label, baseline = make_sipmessage_baseline()
    rows = [
        ("baseline: bare HEP chunk walk", best(bare_walk, packets, args.repeat)),
        (f"baseline: {label}", best(baseline, payloads, max(1, args.repeat // 2))),
        ("sip.hep.decode", best(lambda ps: [hep.decode(p) for p in ps], packets, args.repeat)),
        ("sip.message.parse", best(parse_all, payloads, args.repeat)),
        ("ingest: decode + parse + track", best(ingest, packets, args.repeat)),
    ]
    print(f"{len(packets)} packets, {args.calls} calls, best of {args.repeat}, Python "
          f"{sys.version.split()[0]}")  # fmt: skip
    for name, pps in rows:
        print(f"{name:58s} {pps:>12,.0f} packets/s")
    target = 150_000
    full = rows[-1][1]
    print(f"target {target:,} packets/s: {'met' if full >= target else 'NOT met'} "
          f"({full / target:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
