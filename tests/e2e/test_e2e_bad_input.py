"""Bad input at a live daemon (SPEC §3.3): each corpus datagram is dropped and counted under
its reason, the daemon stays up, and a clean call sent after all of them is billed.

The corpus is tests/corpus/*.bin, written by tests/corpus/make_corpus.py (which packs HEP by
hand, without the project's codec). The daemon runs with `hep_auth_key` set, allows only
127.0.0.1 and ::1, and listens on 127.0.0.1 and on ::1.

Oversize: over IPv4 no UDP payload exceeds 65,507 bytes, the daemon's listener limit, and a
HEPv3 length field stops at 65,535; the two oversize cases that can really arrive are a
compressed payload inflating past one datagram (`hep3_gzip_bomb`) and a 65,520-byte datagram
over IPv6 loopback, where UDP carries up to 65,527 bytes (`hep3_oversized_65520`).
"""

from __future__ import annotations

import importlib.util
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from daemon import Vmgated, launch, packet_counts, parse_rfc3339_us

from sip import hep

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
V4, V6, OUTSIDER = ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6), \
    ("127.0.0.99", socket.AF_INET)

# File → (vmgated_packets_total result label, where it is sent from).
CASES: dict[str, tuple[str, tuple[str, socket.AddressFamily]]] = {
    "random_bytes.bin": ("bad_magic", V4),
    "hep3_3_bytes.bin": ("truncated", V4),
    "hep3_truncated.bin": ("truncated", V4),
    "hep3_total_length_too_small.bin": ("bad_length", V4),
    "hep3_zero_length_chunk.bin": ("bad_chunk", V4),
    "hep3_chunk_past_end.bin": ("bad_chunk", V4),
    "hep3_stray_bytes_after_chunks.bin": ("bad_chunk", V4),
    "hep3_fixed_chunk_wrong_size.bin": ("bad_chunk", V4),
    "hep3_no_payload.bin": ("no_payload", V4),
    "hep3_no_timestamp.bin": ("no_timestamp", V4),
    "hep3_no_addresses.bin": ("no_address", V4),
    "hep3_rtcp_not_sip.bin": ("not_sip", V4),
    "hep3_gzip_bomb.bin": ("oversized", V4),
    "hep3_oversized_65520.bin": ("oversized", V6),
    "hep3_no_auth_key.bin": ("auth", V4),
    "hep3_wrong_auth_key.bin": ("auth", V4),
    "hep3_from_disallowed_source.bin": ("source", OUTSIDER),
    "sip_garbage_start_line.bin": ("sip_bad_start_line", V4),
    "sip_non_utf8_method.bin": ("sip_bad_start_line", V4),
    "sip_utf16.bin": ("sip_bad_start_line", V4),
    "sip_no_call_id.bin": ("sip_no_call_id", V4),
    "sip_bad_cseq.bin": ("sip_bad_cseq", V4),
    "sip_short_body.bin": ("sip_short_body", V4),
    "sip_bad_status.bin": ("sip_bad_status", V4),
    # Not a drop, on purpose: Latin-1 bytes in a display name must not lose a call.
    "sip_latin1_display_name.bin": ("ok", V4),
    "hepv2_bad_header_length.bin": ("bad_length", V4),
    "hepv2_truncated_time_header.bin": ("truncated", V4),
    "hepv1_3_bytes.bin": ("truncated", V4),
}


def load_generator() -> ModuleType:
    """tests/corpus/make_corpus.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_CORPUS = load_generator()
AUTH_KEY: bytes = MAKE_CORPUS.AUTH_KEY


def free_port6() -> int:
    """A UDP port free on ::1."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vmgated]:
    """One daemon for the whole corpus: auth key set, 127.0.0.1 and ::1 only."""
    d = launch(tmp_path_factory.mktemp("bad-input") / "vmgated", auth_key=AUTH_KEY.decode(),
               allowed=("127.0.0.1/32", "::1/128"), hep6_port=free_port6())
    try:
        yield d
    finally:
        d.close()


def send(d: Vmgated, data: bytes, source: tuple[str, socket.AddressFamily]) -> None:
    """Send one datagram from `source` (bound there) to the daemon's v4 or v6 listener."""
    host, family = source
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        if family == socket.AF_INET6:
            s.sendto(data, ("::1", hep6_port(d)))
        else:
            s.sendto(data, d.hep_address)


def hep6_port(d: Vmgated) -> int:
    """The ::1 HEP port, as written in the daemon's config."""
    text = d.config.read_text()
    marker = 'address: "::1", port: '
    start = text.index(marker) + len(marker)
    return int(text[start : text.index("}", start)])


def test_the_corpus_is_what_its_generator_writes() -> None:
    files = {p.name for p in CORPUS.glob("*.bin")}
    assert files == set(CASES), "corpus files and CASES disagree"
    made = MAKE_CORPUS.corpus()
    assert set(made) == files
    for name, data in made.items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: run tests/corpus/make_corpus.py"
    assert len((CORPUS / "hep3_oversized_65520.bin").read_bytes()) == 65_520


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_datagram_is_counted_under_its_reason(daemon: Vmgated, name: str) -> None:
    result, source = CASES[name]
    before = packet_counts(daemon.metrics())
    send(daemon, (CORPUS / name).read_bytes(), source)
    deadline = time.monotonic() + 5
    while True:
        after = packet_counts(daemon.metrics())
        if after != before or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()
             if after.get(k, 0) != before.get(k, 0)}
    assert delta == {("hep", result): 1}, f"{name}: counted as {delta}"
    assert daemon.alive, daemon.logs()


S = 1_000_000


def clean_call(call_id: str, start: int) -> list[bytes]:
    """An answered call as Kamailio traces it: trunk → proxy → gateway, 12 HEP datagrams."""
    trunk, proxy, gw = ("127.0.0.11", 5060), ("127.0.0.1", 5060), ("127.0.0.21", 5060)
    answer, end = start + 3 * S, start + 3 * S + 7_250_000  # 7.25 s answered → billsec 8

    def req(method: str, cseq: int, to_tag: str = "") -> bytes:
        tag = f";tag={to_tag}" if to_tag else ""
        return (f"{method} sip:442071234567@127.0.0.1:5060 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bK-{call_id}-{cseq}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:15551230000@127.0.0.11>;tag=from-{call_id}\r\n"
                f"To: <sip:442071234567@127.0.0.1>{tag}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                "Contact: <sip:15551230000@127.0.0.11:5060>\r\nContent-Length: 0\r\n\r\n").encode()

    def resp(code: int, phrase: str, cseq: int, method: str, to_tag: str = "") -> bytes:
        tag = f";tag={to_tag}" if to_tag else ""
        return (f"SIP/2.0 {code} {phrase}\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bK-{call_id}-{cseq}\r\n"
                f"From: <sip:15551230000@127.0.0.11>;tag=from-{call_id}\r\n"
                f"To: <sip:442071234567@127.0.0.1>{tag}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    to = "gw-tag"
    flow = [
        (req("INVITE", 1), trunk, proxy, start),
        (resp(100, "Trying", 1, "INVITE"), proxy, trunk, start + 100),
        (req("INVITE", 1), proxy, gw, start + 200),
        (resp(180, "Ringing", 1, "INVITE", to), gw, proxy, start + S),
        (resp(180, "Ringing", 1, "INVITE", to), proxy, trunk, start + S + 100),
        (resp(200, "OK", 1, "INVITE", to), gw, proxy, answer),
        (resp(200, "OK", 1, "INVITE", to), proxy, trunk, answer + 100),
        (req("ACK", 1, to), trunk, proxy, answer + 200),
        (req("BYE", 2, to), trunk, proxy, end),
        (req("BYE", 2, to), proxy, gw, end + 100),
        (resp(200, "OK", 2, "BYE", to), gw, proxy, end + 200),
        (resp(200, "OK", 2, "BYE", to), proxy, trunk, end + 300),
    ]
    return [hep.encode(sip, src, dst, ts, capture_id=2001, auth_key=AUTH_KEY)
            for sip, src, dst, ts in flow]


def test_a_clean_call_after_the_corpus_is_billed(daemon: Vmgated) -> None:
    start = (time.time_ns() // 1000 // S - 30) * S  # near the wall clock: a live call
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for datagram in clean_call("clean-after-corpus@127.0.0.11", start):
            s.sendto(datagram, daemon.hep_address)
    deadline = time.monotonic() + 15
    calls = daemon.calls()
    while "clean-after-corpus@127.0.0.11" not in calls and time.monotonic() < deadline:
        time.sleep(0.2)
        calls = daemon.calls()
    call = calls.get("clean-after-corpus@127.0.0.11")
    assert call is not None, daemon.logs()
    assert (call["disposition"], call["sip_code"], call["billsec"]) == ("answered", 200, 8)
    assert parse_rfc3339_us(call["answer"]) == start + 3 * S
    assert (call["trunk"], call["client"], call["reseller"]) == ("acme-1", "gw-01", "r-alpha")
    # 8 s: retail-a 44207 0.0065/min, 60/60 → 60 s → 0.006500; client-std 0.0037/min, 6/6 →
    # 12 s → 0.000740; reseller-alpha 0.0003/min, 60/60 → 0.000300; margin 0.005460.
    assert {p: leg["amount"] for p, leg in call["legs"].items()} == {
        "customer": "0.006500", "vmgateclient": "0.000740", "reseller": "0.000300"}
    assert call["margin"] == "0.005460"
    assert daemon.alive
    assert daemon.ctl_json("ledger", "verify")["ok"] is True
    counts = packet_counts(daemon.metrics())
    assert counts[("hep", "ok")] == 12 + 1  # the clean call and the Latin-1 INVITE


def test_drops_are_logged_but_rate_limited(daemon: Vmgated) -> None:
    # SPEC §3.3: logged at a rate-limited level. The first drop of each source of drops (the
    # listener: source/oversized; the decoder: HEP, auth and SIP faults) is logged at once,
    # later ones are summed into at most one line per 10 s: 27 drops, a handful of lines.
    drop_lines = [line for line in daemon.logs().splitlines()
                  if "WARNING" in line and "dropped" in line]
    assert any("bad_magic" in line for line in drop_lines), daemon.logs()
    assert any("source" in line for line in drop_lines), daemon.logs()
    assert all("vmgated_packets_total" in line for line in drop_lines)
    assert len(drop_lines) <= 8, drop_lines
