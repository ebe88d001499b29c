"""`Pipeline.rerate_entry`: only unrated legs are priced again; rated legs keep their rate."""

from __future__ import annotations

from dataclasses import replace

from example_tenant import example_pipeline as pipeline

from rating.model import Leg, Party
from vmgated.cdr import parse_line
from vmgated.pipeline import Billable

LINE = (b'{"call_id": "rr-1", "trunk": "acme-1", "client": "gw-01", "callee": "442071234567",'
        b' "start": "2026-11-22T10:00:00Z", "answer": "2026-11-22T10:00:05Z",'
        b' "end": "2026-11-22T10:01:06Z"}')


def test_rerate_prices_the_unrated_leg_and_keeps_the_rated_ones_as_billed() -> None:
    p = pipeline()
    cdr = parse_line(LINE)
    billed = p.entry(Billable(cdr.uid, cdr.record, cdr.trunk, cdr.client))
    by_party = {leg.party: leg for leg in billed.legs}
    # History as it could be: the customer leg billed at a rate the deck no longer gives
    # (a row added since would price it differently), the client leg unrated back then.
    old_customer = by_party[Party.CUSTOMER]._replace(amount=by_party[Party.CUSTOMER].amount + 7)
    no_plan = Leg(Party.VMGATECLIENT, None, unrated="no_plan")
    old = replace(billed, legs=(old_customer, no_plan, by_party[Party.RESELLER]),
                  margin=old_customer.amount - by_party[Party.RESELLER].amount,
                  flags=("unrated",))
    new = p.rerate_entry(old)
    legs = {leg.party: leg for leg in new.legs}
    assert legs[Party.CUSTOMER] == old_customer  # kept exactly: history keeps its rate
    assert legs[Party.VMGATECLIENT] == by_party[Party.VMGATECLIENT]  # priced now
    assert legs[Party.RESELLER] == by_party[Party.RESELLER]
    assert new.margin == (old_customer.amount - by_party[Party.VMGATECLIENT].amount
                          - by_party[Party.RESELLER].amount)
    assert new.flags == ()


def test_rerate_of_a_call_still_unrated_changes_nothing() -> None:
    p = pipeline()
    cdr = parse_line(LINE.replace(b'"trunk": "acme-1"', b'"trunk": "nobody"'))
    old = p.entry(Billable(cdr.uid, cdr.record, cdr.trunk, cdr.client))
    assert "unrated" in old.flags
    new = p.rerate_entry(old)
    assert (new.legs, new.flags, new.margin) == (old.legs, old.flags, old.margin)
