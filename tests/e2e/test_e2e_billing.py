"""Real SIP traffic billed end to end (SPEC §3.1, §4, §5, §6, §8, §9).

sipp (trunk 127.0.0.11) → Kamailio (127.0.0.1, siptrace HEPv3) → sipp UAS (gateway
127.0.0.21); Kamailio's HEP goes to a tee that keeps a copy of every datagram and forwards it
to a live vmgated. What the daemon bills is checked against the tee's copy (capture times
parsed by the harness, not by vmgated), against `vmgatectl rate`, against the deck by hand,
and the ledger against `/metrics` and `vmgatectl balances`.

One traffic run serves the whole module: answered calls of two lengths, answered calls with a
re-INVITE, busy, cancelled and unanswered calls, all placed at the same time through five
gateways sharing one daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from daemon import (
    Vmgated,
    format_rfc3339_us,
    launch,
    metric_samples,
    metric_value,
    parse_rfc3339_us,
)
from stack import SCENARIO_PAIRS, CallTimes, HepTee, SippResult, SipStack, wait_call_times

pytestmark = pytest.mark.e2e

NUMBER = "442071234567"  # longest prefix 44207 "United Kingdom London Inner" in all three decks
CAPTURE_ID = 2001  # gw-01's capture id in daemon.write_config
# (group, scenario pair, sipp -d ms, calls, billsec). The re-INVITE scenario pauses twice.
ANSWERED = (("short", "answered", 1500, 5, 2), ("long", "answered", 2500, 5, 3),
            ("reinvite", "reinvite", 1500, 2, 4))
FAILED = (("busy", 2), ("cancel", 2), ("noanswer", 1))  # scenario pair, calls
EXPECTED_FAILED = {"busy": (486, "busy"), "cancel": (487, "cancelled"),
                   "noanswer": (480, "no_answer")}  # fmt: skip
ZERO = "0.000000"


@dataclass(frozen=True)
class Traffic:
    """What one run placed and what the capture says about it."""

    daemon: Vmgated
    results: dict[str, SippResult]  # group name → sipp's own count
    groups: dict[str, list[str]]  # group name → Call-IDs (by the UAC's pid)
    times: dict[str, CallTimes]  # Call-ID → times from the tee's capture
    capture: bytes  # every HEPv3 datagram the daemon was sent, back to back
    base: Path

    @property
    def answered_ids(self) -> list[str]:
        """Call-IDs of every answered group, in ANSWERED order."""
        return [cid for name, *_ in ANSWERED for cid in self.groups[name]]


@pytest.fixture(scope="module")
def traffic(
    sip_tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traffic]:
    """Place every group's calls at once through one daemon; wait until all are billed."""
    base = tmp_path_factory.mktemp("billing")
    with contextlib.ExitStack() as stack:
        daemon = launch(base / "vmgated", capture_id=CAPTURE_ID)
        stack.callback(daemon.close)
        tee = stack.enter_context(HepTee(daemon.hep_address))

        def gateway(pair: str) -> SipStack:
            return stack.enter_context(SipStack(base / pair, uas_scenario=SCENARIO_PAIRS[pair].uas,
                                                hep_to=tee.address, capture_id=CAPTURE_ID))

        gateways = {pair: gateway(pair) for pair in ("answered", "reinvite")}
        uacs = {name: gateways[pair].uac_process(calls=n, rate=10, duration_ms=ms,
                                                 service=NUMBER, scenario=SCENARIO_PAIRS[pair].uac)
                for name, pair, ms, n, _ in ANSWERED}
        for pair, n in FAILED:
            uacs[pair] = gateway(pair).uac_process(
                calls=n, rate=5, duration_ms=1000, service=NUMBER, scenario=SCENARIO_PAIRS[pair].uac
            )
        for uac in uacs.values():  # all groups at once: the run takes as long as the longest
            stack.enter_context(uac)
        results = {name: uac.wait(30) for name, uac in uacs.items()}
        placed = sum(r.created for r in results.values())
        times = wait_call_times(tee, placed)
        groups = {name: sorted(cid for cid in times if cid.split("@")[0].split("-")[1]
                               == str(uac.process.pid))
                  for name, uac in uacs.items()}  # sipp's Call-ID is N-PID@host
        assert daemon.wait_calls(placed) == placed, daemon.logs()
        capture = b"".join(p.data for p in tee.packets)
        yield Traffic(daemon, results, groups, times, capture, base)


def test_sipp_placed_what_the_module_expects(traffic: Traffic) -> None:
    # The premise of the checks below: every call went as its scenario says.
    for name, _, _, n, _ in ANSWERED:
        assert traffic.results[name].successful == n, traffic.results[name]
        assert len(traffic.groups[name]) == n
    for pair, n in FAILED:
        assert traffic.results[pair].ok and traffic.results[pair].successful == n
        assert [traffic.times[c].final for c in traffic.groups[pair]] == \
            [EXPECTED_FAILED[pair][0]] * n


def test_every_answered_call_is_billed_once_with_the_captured_times(traffic: Traffic) -> None:
    calls = traffic.daemon.calls()  # fails on a Call-ID listed twice
    assert sorted(calls) == sorted(traffic.times), "calls listed ≠ calls captured"
    for cid in traffic.answered_ids:
        call, want = calls[cid], traffic.times[cid]
        assert want.answer is not None and want.end is not None
        assert (call["trunk"], call["customer"], call["client"], call["network"],
                call["reseller"]) == ("acme-1", "acme", "gw-01", "yerevan-1", "r-alpha"), call
        assert (call["number"], call["sip_code"], call["disposition"]) == (NUMBER, 200, "answered")
        assert parse_rfc3339_us(call["start"]) == want.start
        assert parse_rfc3339_us(call["answer"]) == want.answer
        assert parse_rfc3339_us(call["end"]) == want.end
        assert call["billsec"] == want.billsec, (cid, want)
        assert call["flags"] == [], call
    # sipp -d 1500 / 2500 after the ACK: 2 s and 3 s calls (ring time not billed); the
    # re-INVITE calls last two pauses (3.0x s) and stay one call each, answered at the first 200.
    for name, _, _, _, billsec in ANSWERED:
        assert {traffic.times[c].billsec for c in traffic.groups[name]} == {billsec}, name
    # Exactly once in the ledger itself, too: one calls row per Call-ID.
    rows = traffic.daemon.ledger_query("SELECT call_id, count(*) FROM calls GROUP BY call_id")
    assert sorted(rows) == sorted((cid, 1) for cid in traffic.times)


def leg_amounts(legs: dict[str, Any]) -> dict[str, tuple[str, str, int, str]]:
    """party → (plan, prefix, charged_sec, amount) of a `calls`/`rate` legs object."""
    return {party: (leg["plan"], leg["prefix"], leg["charged_sec"], leg["amount"])
            for party, leg in legs.items()}


def test_leg_amounts_are_what_vmgatectl_rate_says(traffic: Traffic) -> None:
    calls = traffic.daemon.calls()
    for cid in traffic.answered_ids:
        call, want = calls[cid], traffic.times[cid]
        quote = traffic.daemon.ctl_json(
            "rate", NUMBER, "--trunk", "acme-1", "--client", "gw-01",
            "--at", format_rfc3339_us(want.start), "--seconds", str(want.billsec),
        )
        assert quote["billsec"] == want.billsec
        assert leg_amounts(call["legs"]) == leg_amounts(quote["legs"]), (cid, call, quote)
        assert call["margin"] == quote["margin"]
        charge = Decimal(call["legs"]["customer"]["amount"])
        payouts = Decimal(call["legs"]["vmgateclient"]["amount"]) + Decimal(
            call["legs"]["reseller"]["amount"])
        assert Decimal(call["margin"]) == charge - payouts


def test_one_call_by_hand_from_the_deck_rows(traffic: Traffic) -> None:
    call = traffic.daemon.calls()[traffic.groups["short"][0]]
    assert call["billsec"] == 2
    legs = call["legs"]
    # conf/decks/retail-a.csv   44207,…,0.0065/min, connection 60 s, block 60 s:
    #   2 s → max(60, 2) = 60 s charged → 0.0065 × 60 / 60 = 0.006500. The 4420 promo row
    #   (0.0051, valid 2026-11-01…2027-01-01) is on a shorter prefix: longest prefix wins.
    assert (legs["customer"]["charged_sec"], legs["customer"]["amount"]) == (60, "0.006500")
    # conf/decks/client-std.csv 44207,…,0.0037/min, 6 s / 6 s:
    #   2 s → 6 s charged → 0.0037 × 6 / 60 = 0.000370.
    assert (legs["vmgateclient"]["charged_sec"], legs["vmgateclient"]["amount"]) == (6, "0.000370")
    # conf/decks/reseller-alpha.csv 44207,…,0.0003/min, 60 s / 60 s: 60 s → 0.000300.
    assert (legs["reseller"]["charged_sec"], legs["reseller"]["amount"]) == (60, "0.000300")
    # margin = 0.006500 − 0.000370 − 0.000300 = 0.005830
    assert call["margin"] == "0.005830"


def test_failed_calls_are_recorded_with_their_code_and_never_charged(traffic: Traffic) -> None:
    calls = traffic.daemon.calls()
    for pair, _ in FAILED:
        code, disposition = EXPECTED_FAILED[pair]
        for cid in traffic.groups[pair]:
            call = calls[cid]
            assert (call["sip_code"], call["disposition"], call["billsec"]) == \
                (code, disposition, 0), call
            assert call["answer"] is None
            assert parse_rfc3339_us(call["start"]) == traffic.times[cid].start
            assert (call["trunk"], call["client"], call["reseller"]) == \
                ("acme-1", "gw-01", "r-alpha")
            assert {leg["amount"] for leg in call["legs"].values()} == {ZERO}, call
            assert call["margin"] == ZERO
            postings = traffic.daemon.ledger_query(
                "SELECT count(*) FROM postings p JOIN calls c ON c.seq = p.seq "
                "WHERE c.call_id = ?", cid)
            assert postings == [(0,)], f"{cid}: an unanswered call posted money"


def summary(daemon: Vmgated) -> dict[str, Decimal]:
    """The four summary figures of `vmgatectl balances --json`."""
    b = daemon.ctl_json("balances")
    return {k: Decimal(b[k]) for k in
            ("my_balance", "customer_total", "owed_to_vmgateclients", "owed_to_resellers")}


def test_metrics_and_balances_agree_with_the_ledger(traffic: Traffic) -> None:
    daemon = traffic.daemon
    calls = list(daemon.calls().values())
    charge = sum((Decimal(c["legs"]["customer"]["amount"]) for c in calls), Decimal(0))
    client = sum((Decimal(c["legs"]["vmgateclient"]["amount"]) for c in calls), Decimal(0))
    reseller = sum((Decimal(c["legs"]["reseller"]["amount"]) for c in calls), Decimal(0))
    margin = sum((Decimal(c["margin"]) for c in calls), Decimal(0))
    assert charge > 0 and margin == charge - client - reseller
    want = {"my_balance": margin, "customer_total": -charge,
            "owed_to_vmgateclients": client, "owed_to_resellers": reseller}
    assert summary(daemon) == want
    accounts = {(a["kind"], a["id"]): Decimal(a["balance"])
                for a in daemon.ctl_json("balances")["accounts"]}
    assert accounts == {("customer", "acme"): -charge, ("client", "gw-01"): client,
                        ("reseller", "r-alpha"): reseller, ("tenant", ""): margin}

    text = daemon.metrics()
    figures = {"my_balance": "vmgated_tenant_balance", "customer_total": "vmgated_customer_total",
               "owed_to_vmgateclients": "vmgated_owed_to_clients",
               "owed_to_resellers": "vmgated_owed_to_resellers"}
    for key, metric in figures.items():
        assert Decimal(metric_value(text, metric, currency="USD") or "nan") == want[key], metric
    # Calls counted by (customer, client, disposition) and billed seconds, as listed.
    counted = {(dict(k)["customer"], dict(k)["client"], dict(k)["disposition"]): int(v)
               for k, v in metric_samples(text, "vmgated_calls_total").items()}
    listed: dict[tuple[str, str, str], int] = {}
    for c in calls:
        key = (c["customer"], c["client"], c["disposition"])
        listed[key] = listed.get(key, 0) + 1
    assert counted == listed
    assert listed[("acme", "gw-01", "answered")] == 12
    assert int(metric_value(text, "vmgated_billed_seconds_total") or -1) == \
        sum(c["billsec"] for c in calls) == 5 * 2 + 5 * 3 + 2 * 4
    assert metric_value(text, "vmgated_udp_receive_errors_total") == "0"
    # Config, decks and modules were frozen out of the cycle collector's walks at start
    # (vmgated.heap); 0 would mean every full collection walks the rate decks again.
    assert int(metric_value(text, "vmgated_gc_frozen_objects") or 0) > 10_000
    assert float(metric_value(text, "vmgated_gc_pause_max_seconds") or -1) >= 0
    assert daemon.ctl_json("ledger", "verify")["ok"] is True


def test_pay_and_payouts_move_the_four_figures_exactly(traffic: Traffic) -> None:
    daemon = traffic.daemon
    before = summary(daemon)
    daemon.ctl("pay", "acme", "10", "--ref", "e2e-pay-1")
    daemon.ctl("payout", "client", "gw-01", "0.001234", "--ref", "e2e-out-client-1")
    daemon.ctl("payout", "reseller", "r-alpha", "0.0005", "--ref", "e2e-out-reseller-1")
    after = summary(daemon)
    # Payments move money between a party and `external`: My Balance never changes.
    assert after == {
        "my_balance": before["my_balance"],
        "customer_total": before["customer_total"] + Decimal("10"),
        "owed_to_vmgateclients": before["owed_to_vmgateclients"] - Decimal("0.001234"),
        "owed_to_resellers": before["owed_to_resellers"] - Decimal("0.0005"),
    }
    payments = {p["reference"]: p for p in daemon.ctl_json("payments")}
    assert {ref: (p["direction"], p["target_type"], p["target"], p["amount"])
            for ref, p in payments.items()} == {
        "e2e-pay-1": ("IN", "Customer", "acme", "10.000000"),
        "e2e-out-client-1": ("OUT", "VMGateClient", "gw-01", "0.001234"),
        "e2e-out-reseller-1": ("OUT", "Reseller", "r-alpha", "0.000500"),
    }
    # The same reference again is a no-op: nothing moves, nothing is listed twice.
    again = daemon.ctl_json("pay", "acme", "10", "--ref", "e2e-pay-1")
    assert again["existed"] is True
    assert summary(daemon) == after
    assert len(daemon.ctl_json("payments")) == 3
    text = daemon.metrics()
    assert Decimal(metric_value(text, "vmgated_customer_total", currency="USD") or "nan") == \
        after["customer_total"]
    assert Decimal(metric_value(text, "vmgated_owed_to_clients", currency="USD") or "nan") == \
        after["owed_to_vmgateclients"]
    assert daemon.ctl_json("ledger", "verify")["ok"] is True


def test_replaying_the_capture_bills_exactly_like_the_live_run(traffic: Traffic) -> None:
    # SPEC §3.1: capture time, never receive time, so a replay bills like the live run.
    path = traffic.base / "capture.hep"
    path.write_bytes(traffic.capture)
    fresh = launch(traffic.base / "replay", capture_id=CAPTURE_ID)
    try:
        out = fresh.ctl_json("replay", str(path))
        assert out["billed"] == len(traffic.times), out
        live = traffic.daemon.calls()
        replayed = fresh.calls()
        assert sorted(replayed) == sorted(live)
        for cid, call in live.items():
            other = replayed[cid]
            for field in ("call_uid", "trunk", "customer", "client", "reseller", "number", "start",
                          "answer", "end", "billsec", "sip_code", "disposition", "legs",
                          "margin", "flags"):
                assert other[field] == call[field], (cid, field, other[field], call[field])
        again = fresh.ctl_json("replay", str(path))
        assert again["billed"] == 0 and again["already_billed"] == len(traffic.times), again
        assert fresh.ctl_json("ledger", "verify")["ok"] is True
    finally:
        fresh.close()
    # Into the live daemon: same call keys, so nothing is billed twice.
    before = traffic.daemon.ctl_json("balances")
    out = traffic.daemon.ctl_json("replay", str(path))
    assert out["billed"] == 0 and out["already_billed"] == len(traffic.times), out
    assert traffic.daemon.ctl_json("balances") == before
    assert len(traffic.daemon.calls()) == len(traffic.times)


def test_hepv2_from_kamailio_is_billed_too(
    vmgated_factory: Callable[..., Vmgated], sip_stack_factory: Callable[..., SipStack]
) -> None:
    # SPEC §3.1: HEPv3 and HEPv2 (Kamailio's `hep_version 2`: no chunks, a fixed header).
    daemon = vmgated_factory(capture_id=CAPTURE_ID)
    with HepTee(daemon.hep_address) as tee:
        stack = sip_stack_factory(hep_to=tee.address, capture_id=CAPTURE_ID, hep_version=2)
        result = stack.call(calls=3, rate=10, duration_ms=1500, service=NUMBER)
        assert result.ok and result.successful == 3, result
        times = wait_call_times(tee, 3)
    assert all(p.data[0] == 2 for p in tee.packets)
    assert daemon.wait_calls(3) == 3, daemon.logs()
    calls = daemon.calls()
    assert sorted(calls) == sorted(times)
    for cid, want in times.items():
        call = calls[cid]
        assert (call["disposition"], call["billsec"]) == ("answered", want.billsec), call
        assert parse_rfc3339_us(call["answer"]) == want.answer
        assert parse_rfc3339_us(call["end"]) == want.end
        assert (call["trunk"], call["client"], call["reseller"]) == ("acme-1", "gw-01", "r-alpha")
        assert call["legs"]["customer"]["amount"] == "0.006500"
