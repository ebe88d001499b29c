"""SPEC §4 attribution: trunk by source, client by destination or capture id, reseller by
join code (or direct)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.call import CallRecord, Disposition, Hop
from vmgated.attribution import DIRECT, Attribution, Attributor, EndpointIndex
from vmgated.config import Config, load_config
from vmgated.configparse import parse_endpoint

SMALL = Path(__file__).resolve().parents[2] / "tests" / "data" / "configs" / "small.yaml"
PROXY = ("127.0.0.1", 5060)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(SMALL, env={})


@pytest.fixture(scope="module")
def attributor(config: Config) -> Attributor:
    return Attributor(config)


def record(*hops: Hop, capture_ids: tuple[int, ...] = ()) -> CallRecord:
    return CallRecord(
        call_id="c1",
        from_tag="t1",
        caller="alice",
        callee="442071234567",
        start=1_795_000_000_000_000,
        answer=1_795_000_001_000_000,
        end=1_795_000_061_000_000,
        sip_code=200,
        disposition=Disposition.ANSWERED,
        hops=hops,
        capture_ids=capture_ids,
    )


def test_trunk_by_source_client_by_destination_reseller_by_join_code(
    attributor: Attributor,
) -> None:
    # Kamailio in the middle: carrier → proxy, then proxy → gateway.
    call = record(
        Hop(("127.0.0.1", 5070), PROXY, 1),
        Hop(PROXY, ("127.0.0.1", 5080), 1),
    )
    assert attributor.attribute(call) == Attribution(
        trunk="acme-1", customer="acme", client="gw-01", network="net-a", reseller="r-one"
    )


def test_first_matching_source_hop_wins(attributor: Attributor) -> None:
    call = record(
        Hop(("10.1.0.9", 5060), PROXY, None),  # acme-net, first in time
        Hop(("127.0.0.1", 5070), ("127.0.0.1", 5080), None),  # acme-1, later
    )
    assert attributor.attribute(call).trunk == "acme-net"


def test_trunk_by_cidr_any_port(attributor: Attributor) -> None:
    call = record(Hop(("10.1.0.200", 40000), PROXY, None))
    who = attributor.attribute(call)
    assert (who.trunk, who.customer) == ("acme-net", "acme")
    assert attributor.attribute(record(Hop(("10.1.1.1", 5060), PROXY, None))).trunk is None


def test_port_must_match_when_the_address_has_one(attributor: Attributor) -> None:
    assert attributor.attribute(record(Hop(("127.0.0.1", 5071), PROXY, None))).trunk is None


def test_direct_client_has_reseller_direct(attributor: Attributor) -> None:
    who = attributor.attribute(record(Hop(PROXY, ("10.2.0.2", 5062), None)))
    assert (who.client, who.network, who.reseller) == ("gw-02", "net-a", DIRECT)
    assert who.is_direct


def test_client_by_hop_capture_id(attributor: Attributor) -> None:
    # gw-03 has no address; the HEP capture id of the agent that saw the INVITE names it.
    who = attributor.attribute(record(Hop(PROXY, ("192.0.2.1", 5060), 2003)))
    assert who.client == "gw-03" and who.reseller == DIRECT


def test_client_by_record_capture_id(attributor: Attributor) -> None:
    who = attributor.attribute(record(Hop(PROXY, ("192.0.2.1", 5060), None), capture_ids=(2001,)))
    assert (who.client, who.reseller) == ("gw-01", "r-one")


def test_destination_address_beats_capture_id(attributor: Attributor) -> None:
    who = attributor.attribute(record(Hop(PROXY, ("10.2.0.2", 5060), 2001)))
    assert who.client == "gw-02"


def test_client_by_responder_when_no_invite_was_addressed_to_it(attributor: Attributor) -> None:
    # SPEC §4 "(or the responder ...)": the tracker keeps the hop a reply implies (see
    # test_dialog); the proxy's INVITE went to a balancer at 192.0.2.99, gw-01 answered.
    from sip.dialog import Tracker
    from sip.message import parse

    def msg(start: str, cseq: str, to_tag: str = "") -> bytes:
        to = "To: <sip:442071234567@x>" + (f";tag={to_tag}" if to_tag else "")
        return (f"{start}\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n"
                f"From: <sip:alice@x>;tag=a\r\n{to}\r\nCall-ID: resp-1\r\n"
                f"CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()

    trunk, lb, gw = ("127.0.0.1", 5070), ("192.0.2.99", 5060), ("127.0.0.1", 5080)
    t, s = 1_795_000_000_000_000, 1_000_000
    tracker = Tracker()
    invite = parse(msg("INVITE sip:442071234567@x SIP/2.0", "1 INVITE"))
    tracker.feed(invite, t, trunk, PROXY)
    tracker.feed(invite, t + 1, PROXY, lb)
    tracker.feed(parse(msg("SIP/2.0 200 OK", "1 INVITE", "b")), t + s, gw, PROXY)
    (call,) = tracker.feed(parse(msg("BYE sip:x SIP/2.0", "2 BYE", "b")), t + 9 * s, trunk,
                           PROXY)
    who = attributor.attribute(call)
    assert (who.trunk, who.client, who.reseller) == ("acme-1", "gw-01", "r-one")


def test_unknown_parties(attributor: Attributor) -> None:
    who = attributor.attribute(record(Hop(("192.0.2.7", 5060), ("192.0.2.8", 5060), 9)))
    assert who == Attribution(None, None, None, None, DIRECT)


def test_named_parties_from_a_cdr_line(attributor: Attributor) -> None:
    assert attributor.named(trunk="acme-1", client="gw-01") == Attribution(
        "acme-1", "acme", "gw-01", "net-a", "r-one"
    )
    # Unknown ids are kept (the rater reports them unknown), without derived parties.
    assert attributor.named(trunk="ghost", client=None) == Attribution(
        "ghost", None, None, None, DIRECT
    )


def test_lookup_by_address_for_cdr_src_and_dst(attributor: Attributor) -> None:
    assert attributor.trunk_at(("10.1.0.1", 5060)) == "acme-net"
    assert attributor.client_at(("127.0.0.1", 5080)) == "gw-01"
    assert attributor.client_at(("127.0.0.1", 5070)) is None


def test_index_canonicalises_ipv6_and_v4_mapped_text() -> None:
    index = EndpointIndex(
        [
            (parse_endpoint("[2001:db8::1]:5060"), "v6"),
            (parse_endpoint("10.9.0.0/16"), "cidr"),
            (parse_endpoint("192.0.2.5:5060"), "host"),
        ]
    )
    assert index.lookup("2001:DB8:0:0::1", 5060) == "v6"
    assert index.lookup("::ffff:10.9.3.4", 1) == "cidr"
    assert index.lookup("::ffff:192.0.2.5", 5060) == "host"
    assert index.lookup("garbage", 5060) is None


def test_most_specific_cidr_is_tried_first_and_ports_are_respected() -> None:
    index = EndpointIndex(
        [
            (parse_endpoint("10.0.0.0/8:5060"), "wide"),
            (parse_endpoint("10.1.0.0/16:5061"), "narrow"),
        ]
    )
    assert index.lookup("10.1.2.3", 5061) == "narrow"
    assert index.lookup("10.1.2.3", 5060) == "wide"
    assert index.lookup("10.1.2.3", 5062) is None


def test_a_shared_path_is_attributed_once_and_equal_paths_alike(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    attributor = Attributor(config)
    hops = (Hop(("127.0.0.1", 5070), PROXY, 1), Hop(PROXY, ("127.0.0.1", 5080), 1))
    looked_up: list[object] = []
    trunk_of = Attributor.trunk_of

    def counting(self: Attributor, h: tuple[Hop, ...]) -> str | None:
        looked_up.append(h)
        return trunk_of(self, h)

    monkeypatch.setattr(Attributor, "trunk_of", counting)
    first = attributor.attribute_path(hops, (1,))
    assert attributor.attribute(record(*hops, capture_ids=(1,))).client == "gw-01"
    ids = tuple([1])  # equal to (1,), another object
    assert attributor.attribute_path(hops, ids) is attributor.attribute_path(hops, ids)
    assert looked_up.count(hops) == 3  # one per distinct (hops, capture ids) pair of objects
    # Equal but separate tuples (not shared by the tracker) give the same parties.
    assert attributor.attribute_path(tuple(hops), (1,)) == first
    assert first.trunk == "acme-1" and first.client == "gw-01"


def test_the_path_memo_is_bounded(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmgated.attribution._PATHS_MAX", 8)
    attributor = Attributor(config)
    for port in range(50):
        got = attributor.attribute_path((Hop(("127.0.0.1", 5070), ("10.9.9.9", port), None),), ())
        assert got.trunk == "acme-1"
    assert 0 < len(attributor._paths) <= 8
