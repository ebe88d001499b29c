"""Record real Kamailio siptrace captures into tests/data/ (see tests/data/README.md).

Each capture runs a fresh Kamailio (siptrace, `sip_trace_mode("t")`, SPEC §3.1) between a
sipp UAC on 127.0.0.11:5060 (the trunk) and a sipp UAS on 127.0.0.21:5060 (the gateway),
the proxy on 127.0.0.1:5060, HEP to 127.0.0.1:9060. Fixed ports keep the captures
reproducible; the script fails if one is taken. It checks sipp's result and the HEP packet
count of every capture before writing anything, and prints a line per packet.

Usage (as root, Debian's kamailio and sip-tester installed):
    /work/venv/bin/python tests/data/record_captures.py [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from stack import (
    GATEWAY_HOST,
    PROXY_HOST,
    SCENARIO_PAIRS,
    TRUNK_HOST,
    HepRecorder,
    Kamailio,
    ScenarioPair,
    hep3_summary,
    sip_label,
    sipp_uac,
    sipp_uas,
)

SIP_PORT = 5060
HEP_PORT = 9060
CAPTURE_ID_V3 = 101
CAPTURE_ID_V2 = 102


@dataclass(frozen=True)
class Recording:
    """One capture: which scenario pair (stack.SCENARIO_PAIRS), how many calls, which HEP."""

    name: str
    pair: str
    calls: int
    rate: float
    duration_ms: int
    hep_version: int = 3
    capture_id: int = CAPTURE_ID_V3
    pcap: bool = False  # also write <name>.pcap (Ethernet/IPv4/UDP to the HEP port)
    raw: bool = True  # write <name>.hep (back-to-back datagrams; HEPv3 only)

    @property
    def scenarios(self) -> ScenarioPair:
        """The sipp scenarios and the per-call packet counts."""
        return SCENARIO_PAIRS[self.pair]


RECORDINGS = (
    Recording("kamailio_answered", "answered", 5, 5, 2500, pcap=True),
    Recording("kamailio_busy", "busy", 3, 5, 1000),
    Recording("kamailio_noanswer", "noanswer", 1, 1, 1000),
    Recording("kamailio_cancel", "cancel", 3, 5, 1000),
    Recording("kamailio_reinvite", "reinvite", 2, 5, 1500),
    Recording(
        "kamailio_hepv2", "answered", 2, 5, 1500,
        hep_version=2, capture_id=CAPTURE_ID_V2, pcap=True, raw=False,
    ),
)  # fmt: skip


def record(rec: Recording, out: Path, scratch: Path) -> None:
    """Run one recording and write its files; raises SystemExit on any mismatch."""
    work = scratch / rec.name
    with (
        HepRecorder(PROXY_HOST, HEP_PORT) as hep,
        sipp_uas(GATEWAY_HOST, SIP_PORT, rec.scenarios.uas, workdir=work / "uas"),
        Kamailio(
            listen=(PROXY_HOST, SIP_PORT),
            hep_to=hep.address,
            relay_to=(GATEWAY_HOST, SIP_PORT),
            capture_id=rec.capture_id,
            hep_version=rec.hep_version,
            workdir=work / "kamailio",
        ) as kam,
    ):
        result = sipp_uac(
            kam.address,
            local_host=TRUNK_HOST,
            local_port=SIP_PORT,
            calls=rec.calls,
            rate=rec.rate,
            duration_ms=rec.duration_ms,
            scenario=rec.scenarios.uac,
            workdir=work / "uac",
        )
        if not result.ok or result.successful != rec.calls:
            raise SystemExit(f"{rec.name}: sipp failed: {result} (logs in {work})")
        hep.wait_quiet(1.0)
        packets = hep.packets
    seen = Counter(sip_label(p.data) for p in packets)
    expected = rec.scenarios.expected(rec.calls)
    if seen != expected:
        raise SystemExit(f"{rec.name}: HEP packets {dict(seen)} != expected {dict(expected)}")
    print(f"== {rec.name}: {len(packets)} packets, {rec.calls} calls, HEPv{rec.hep_version}")
    for packet in packets:
        line = hep3_summary(packet.data) if rec.hep_version == 3 else sip_label(packet.data)
        print(f"   {line}")
    if rec.raw:
        size = hep.save(out / f"{rec.name}.hep")
        print(f"   wrote {out / f'{rec.name}.hep'} ({size} bytes)")
    if rec.pcap:
        size = hep.save_pcap(out / f"{rec.name}.pcap")
        print(f"   wrote {out / f'{rec.name}.pcap'} ({size} bytes)")


def main(argv: list[str] | None = None) -> int:
    """Record the named captures (all by default)."""
    known = [r.name for r in RECORDINGS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"captures to record (default all): {', '.join(known)}",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown capture {', '.join(unknown)}; known: {', '.join(known)}")
    # Kept on failure so the sipp and Kamailio logs can be read.
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="record-captures-"))
    for rec in RECORDINGS:
        if not args.names or rec.name in args.names:
            record(rec, args.out, scratch)
    shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
