"""SPEC §3.2: CDR lines, read exactly, identified by call_id and originating trunk."""

from __future__ import annotations

import contextlib
import json

import pytest
from example_tenant import DEMO_CDRS, example_pipeline, pipeline_failing_on
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.call import Disposition
from vmgated.cdr import CdrError, parse_line
from vmgated.hepparse import INTERNAL_ERROR
from vmgated.pipeline import Billable

BASE = {
    "call_id": "abc@gw",
    "trunk": "acme-1",
    "client": "gw-01",
    "caller": "1001",
    "callee": "442071234567",
    "start": "2026-11-22T10:00:00Z",
    "answer": "2026-11-22T10:00:05.250Z",
    "end": "2026-11-22T10:01:06.250Z",
}


def line(**over: object) -> bytes:
    obj = {**BASE, **over}
    return json.dumps({k: v for k, v in obj.items() if v != "DROP"}).encode()


def test_answered_cdr_bills_answer_to_end() -> None:
    cdr = parse_line(line())
    assert cdr.record.billsec == 61  # 10:00:05.25 → 10:01:06.25
    assert cdr.record.disposition is Disposition.ANSWERED
    assert cdr.record.sip_code == 200
    assert (cdr.trunk, cdr.client) == ("acme-1", "gw-01")


def test_epoch_seconds_with_fraction_are_exact() -> None:
    cdr = parse_line(line(start=1763805600, answer=1763805600.1, end=1763805660.100001))
    # 60.000001 s of talk → 61 billed seconds; a float would have lost the microsecond.
    assert cdr.record.billsec == 61


def test_same_call_id_and_trunk_is_the_same_uid_whatever_the_times() -> None:
    a = parse_line(line())
    b = parse_line(line(end="2026-11-22T10:02:00Z"))
    c = parse_line(line(trunk="acme-2"))
    assert a.uid == b.uid
    assert a.uid != c.uid


def test_unanswered_without_code_is_no_answer_with_code_zero() -> None:
    cdr = parse_line(line(answer=None, sip_code="DROP"))
    assert cdr.record.disposition is Disposition.NO_ANSWER
    assert cdr.record.sip_code == 0
    assert cdr.record.billsec == 0


@pytest.mark.parametrize(("code", "disp"), [(486, "busy"), (487, "cancelled"), (503, "failed")])
def test_sip_code_gives_disposition(code: int, disp: str) -> None:
    assert parse_line(line(answer=None, sip_code=code)).record.disposition == disp


def test_src_address_forms() -> None:
    cdr = parse_line(line(trunk="DROP", src="[2001:db8::1]:5060", client="DROP", dst="10.0.0.2"))
    assert cdr.trunk is None and cdr.client is None
    assert cdr.record.hops[0].src == ("2001:db8::1", 5060)
    assert cdr.record.hops[0].dst == ("10.0.0.2", 0)


def test_an_empty_trunk_is_absent_and_the_src_names_the_origin() -> None:
    # Before: "" was the trunk's name — never a configured trunk, so the call went unrated
    # although its src would have attributed it.
    empty = parse_line(line(trunk="", src="10.0.0.1:5060"))
    assert empty.trunk is None
    assert empty.uid == parse_line(line(trunk="DROP", src="10.0.0.1:5060")).uid


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "bad_json"),
        (b"[1]", "bad_json"),
        (line(call_id="DROP"), "missing_field"),
        (line(trunk="DROP"), "missing_field"),
        (line(end="2026-11-22T09:00:00Z"), "bad_field"),
        (line(sip_code=42), "bad_field"),
        (line(start="yesterday"), "bad_field"),
        (line(extra=1), "bad_field"),
        (b" " * 9000, "oversized"),
        # Found by an audit: these passed (or raised something else) and then stopped the
        # ledger writer or cost the rest of their batch.
        (line(start=10**13, answer=10**13 + 5, end=10**13 + 65), "bad_field"),
        (b'{"call_id": "x", "trunk": "t", "client": "c", "start": 1e999999999, '
         b'"end": 1e999999999}', "bad_field"),
        (line(call_id="x\ud800"), "bad_field"),
        (line(trunk="acme-\udfff"), "bad_field"),
        # A 2xx without its answer time was recorded as failed and billed 0.
        (line(answer=None, sip_code=200), "bad_field"),
        (line(answer=None, sip_code=202), "bad_field"),
        # An empty src stood for the datagram's sender, whose port is ephemeral.
        (line(trunk="DROP", src=""), "missing_field"),
        (line(trunk="", src=""), "missing_field"),
        (line(client="", dst=""), "missing_field"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(CdrError) as info:
        parse_line(data)
    assert info.value.reason == reason


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_cdr_error(data: bytes) -> None:
    with contextlib.suppress(CdrError):
        parse_line(data)


def test_the_readme_demo_lines_bill_on_the_example_tenant() -> None:
    # README "Try it by hand": conf/demo-cdrs.jsonl on conf/vmgated.yaml gives two answered
    # calls priced on all three legs and one busy call at 0.
    pipeline = example_pipeline()
    lines = DEMO_CDRS.read_bytes().splitlines()
    entries = [pipeline.entry(Billable(c.uid, c.record, c.trunk, c.client))
               for c in map(parse_line, lines)]
    assert [(e.disposition, e.billsec) for e in entries] == [
        ("answered", 61), ("answered", 125), ("busy", 0)]
    for e in entries:
        assert (e.trunk, e.customer, e.client, e.reseller) == ("acme-1", "acme", "gw-01",
                                                               "r-alpha")
        assert [leg.party.value for leg in e.legs if leg.rated] == [
            "customer", "vmgateclient", "reseller"]
        assert e.flags == ()
    assert all(leg.amount > 0 for e in entries[:2] for leg in e.legs)
    assert all(leg.amount == 0 for leg in entries[2].legs)


def test_a_line_that_hits_a_bug_costs_only_itself_and_is_counted() -> None:
    # SPEC §3.3: never loses another call. An exception the parsers do not know (here the
    # sink, standing for the ledger side) used to escape feed_cdr and drop the whole batch.
    pipeline, billed, counters = pipeline_failing_on("demo-0002@acme")
    lines = DEMO_CDRS.read_bytes().splitlines()
    sender = ("127.0.0.1", 5060)
    pipeline.feed_cdr([(lines[0], sender), (lines[1], sender), (lines[2], sender)])
    assert billed == ["demo-0001@acme", "demo-0003@acme"]
    assert counters.packets[("cdr", INTERNAL_ERROR)] == 1
    assert counters.packets[("cdr", "ok")] == 3


def test_an_answered_cdr_with_no_billable_second_pays_the_connection_fee() -> None:
    # answer == end: billsec 0, answered; retail-a's 535 row has a 0.0100 connection fee.
    pipeline = example_pipeline()
    cdr = parse_line(line(callee="5351234567", answer="2026-11-22T10:00:05Z",
                          end="2026-11-22T10:00:05Z"))
    entry = pipeline.entry(Billable(cdr.uid, cdr.record, cdr.trunk, cdr.client))
    assert (entry.disposition, entry.billsec) == ("answered", 0)
    (customer,) = [leg for leg in entry.legs if leg.party.value == "customer"]
    assert (customer.prefix, customer.charged_sec, customer.amount) == ("535", 0, 10_000)


def test_a_cdr_longer_than_max_duration_is_cut_to_it_and_flagged() -> None:
    # An end in 9999 used to be billed as claimed: 251,575,459,199 s, 27 million USD.
    three_h = 3 * 3600 * 1_000_000
    cdr = parse_line(line(end="9999-01-01T00:00:00Z"), None, three_h)
    assert cdr.record.end == cdr.record.answer + three_h  # type: ignore[operator]
    assert (cdr.record.billsec, cdr.record.flags) == (3 * 3600, ("max_duration",))
    assert cdr.uid == parse_line(line()).uid  # the same call, only its times cut
    exact = parse_line(line(end="2026-11-22T13:00:05.250Z"), None, three_h)  # exactly 3 h
    assert (exact.record.billsec, exact.record.flags) == (3 * 3600, ())
    unanswered = parse_line(line(answer=None, end="9999-01-01T00:00:00Z"), None, three_h)
    assert unanswered.record.flags == () and unanswered.record.billsec == 0


def test_the_pipeline_caps_cdrs_at_the_running_max_duration() -> None:
    billed: list[object] = []
    pipeline = example_pipeline(lambda item, tx: billed.append(tx))
    pipeline.tracker.max_duration_us = 3600 * 1_000_000  # as a reload to 1h sets it
    pipeline.feed_cdr([(line(end="9999-01-01T00:00:00Z"), ("127.0.0.1", 5060))])
    (tx,) = billed
    entry = tx.call  # type: ignore[attr-defined]
    assert (entry.billsec, entry.flags) == (3600, ("max_duration",))
    (customer,) = [leg for leg in entry.legs if leg.party.value == "customer"]
    assert customer.charged_sec == 3600 and 0 < customer.amount < 10**9
