"""Builders of call entries and legs shared by the ledger tests (and a check of them)."""

from __future__ import annotations

from decimal import Decimal

from ledger.model import CallEntry
from rating.model import Leg, Party

T0 = 1_795_000_000_000_000  # 2026-11-18, EpochUs


def leg(
    party: Party,
    amount: int,
    *,
    plan: str | None = None,
    prefix: str = "374",
    since: int = T0 - 86_400_000_000,
    unrated: str | None = None,
) -> Leg:
    """A rated leg (or an unrated one when `unrated` is given)."""
    if unrated is not None:
        return Leg(party=party, plan=plan, unrated=unrated)
    return Leg(
        party=party,
        plan=plan or f"{party.value}-plan",
        prefix=prefix,
        description="Armenia",
        rate_per_min=Decimal("0.0420"),
        connection_fee=Decimal("0"),
        connection_sec=0,
        billing_block_sec=1,
        valid_since=since,
        charged_sec=60,
        amount=amount,
    )


def call(
    uid: str = "u1",
    *,
    charge: int | None = 42_000,
    payout: int | None = 30_000,
    reseller_share: int | None = 2_000,
    customer: str = "acme",
    client: str = "gw-01",
    reseller: str = "r-alpha",
    start: int = T0,
    flags: tuple[str, ...] = (),
) -> CallEntry:
    """A call entry; an amount of None makes that leg unrated, reseller_share None+direct."""
    legs = [
        leg(Party.CUSTOMER, charge)
        if charge is not None
        else leg(Party.CUSTOMER, 0, unrated="no_rate", plan="retail-a"),
        leg(Party.VMGATECLIENT, payout)
        if payout is not None
        else leg(Party.VMGATECLIENT, 0, unrated="no_rate", plan="client-std"),
    ]
    if reseller != "direct":
        legs.append(
            leg(Party.RESELLER, reseller_share)
            if reseller_share is not None
            else leg(Party.RESELLER, 0, unrated="no_plan")
        )
    margin = sum(
        (lg.amount if lg.party is Party.CUSTOMER else -lg.amount) for lg in legs if lg.rated
    )
    return CallEntry(
        call_uid=uid,
        call_id=f"{uid}@example",
        trunk="acme-1",
        customer=customer,
        client=client,
        network="yerevan-1",
        reseller=reseller,
        caller="1000",
        callee="0037410000000",
        number="37410000000",
        start=start,
        answer=start + 2_000_000,
        end=start + 62_000_000,
        billsec=60,
        sip_code=200,
        disposition="answered",
        legs=tuple(legs),
        margin=margin,
        flags=flags,
    )


def test_fixture_margin_is_charge_minus_payouts() -> None:
    entry = call(charge=100, payout=60, reseller_share=10)
    assert entry.margin == 30
    assert call(payout=None, charge=100, reseller_share=None).margin == 100
