"""SPEC §5 three-leg rating: Customer charge, VMGateClient and reseller payouts, margin."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.deck import HEADER, parse_deck
from rating.model import Leg, Party, RatedCall, RatePlan, Scope
from rating.rater import ClientTariff, Rater, RaterError, TrunkTariff
from rating.tariff import amount_micros, charged_seconds
from rating.units import parse_time

DECKS = Path(__file__).resolve().parents[2] / "conf" / "decks"
NOV = parse_time("2026-11-22T10:00:00Z")


def plan(name: str, scope: Scope, *rows: str) -> RatePlan:
    text = "\n".join((HEADER, *rows)) + "\n"
    return RatePlan(name, scope, "USD", parse_deck(text, f"{name}.csv"))


PLANS = {
    "retail": plan(
        "retail",
        Scope.CUSTOMER,
        "44,UK,2026-01-01,,0.0200,,60,60",
        "4420,London,2026-01-01,,0.0123,,30,6",
    ),
    "client": plan(
        "client",
        Scope.VMGATECLIENT,
        "44,UK,2026-01-01,,0.0060,,6,6",
        "4420,London,2026-01-01,,0.0050,,1,1",
    ),
    "resell": plan("resell", Scope.RESELLER, "44,UK,2026-01-01,,0.0006,,60,60"),
    "greedy": plan("greedy", Scope.VMGATECLIENT, "44,UK,2026-01-01,,0.0500,0.01,1,1"),
}
TRUNKS = {
    "acme-1": TrunkTariff("acme-1", "acme", "retail", ""),
    "acme-2": TrunkTariff("acme-2", "acme", "retail", "0101#"),
    "bare": TrunkTariff("bare", "bob", None, ""),
}
CLIENTS = {
    "gw-01": ClientTariff("gw-01", "client", "r-alpha", "resell"),
    "gw-direct": ClientTariff("gw-direct", "client", None, None),
    "gw-noplan": ClientTariff("gw-noplan", None, None, None),
    "gw-resnoplan": ClientTariff("gw-resnoplan", "client", "r-beta", None),
    "gw-greedy": ClientTariff("gw-greedy", "greedy", None, None),
}


@pytest.fixture(scope="module")
def rater() -> Rater:
    return Rater(PLANS, TRUNKS, CLIENTS)


def test_three_legs_with_their_own_plans_and_increments(rater: Rater) -> None:
    call = rater.rate("+44 20 7123 4567", "acme-1", "gw-01", NOV, 61)
    # customer 4420 at 0.0123, 30/6: 61 s → 66 s → 0.0123 × 66 / 60 = 0.01353
    assert (call.customer.prefix, call.customer.charged_sec, call.customer.amount) == (
        "4420",
        66,
        13_530,
    )
    # client 4420 at 0.0050, 1/1: 61 s → 0.0050 × 61 / 60 = 0.0050833… → 0.005083
    assert (call.vmgateclient.charged_sec, call.vmgateclient.amount) == (61, 5_083)
    # reseller 44 at 0.0006, 60/60: 120 s → 0.0012
    assert call.reseller is not None
    assert (call.reseller.prefix, call.reseller.charged_sec, call.reseller.amount) == (
        "44",
        120,
        1_200,
    )
    assert call.margin == 13_530 - 5_083 - 1_200
    assert call.number == "442071234567"
    assert not call.unrated and not call.negative_margin
    assert call.customer.party is Party.CUSTOMER and call.customer.plan == "retail"
    assert call.customer.rate_per_min == Decimal("0.0123")
    assert call.customer.valid_since == parse_time("2026-01-01")


def test_unanswered_call_is_rated_but_costs_nothing(rater: Rater) -> None:
    call = rater.rate("442071234567", "acme-1", "gw-01", NOV, 0)
    assert call.customer.rated and call.customer.amount == 0 and call.customer.charged_sec == 0
    assert call.vmgateclient.amount == 0 and call.margin == 0


def test_answered_with_billsec_zero_costs_the_connection_fee(rater: Rater) -> None:
    # SPEC §5: charged 0 when billsec is 0, but the fee is due on every answered call.
    # (Found by an audit: the rater read "answered" from billsec > 0.)
    for _ in range(2):  # the second time past any memo
        call = rater.rate("442071234567", "acme-1", "gw-greedy", NOV, 0, True)
        assert (call.vmgateclient.charged_sec, call.vmgateclient.amount) == (0, 10_000)
        assert (call.customer.charged_sec, call.customer.amount) == (0, 0)  # no fee in retail
        assert call.margin == -10_000 and call.negative_margin
    unanswered = rater.rate("442071234567", "acme-1", "gw-greedy", NOV, 0, False)
    assert unanswered.vmgateclient.amount == 0
    assert rater.rate("442071234567", "acme-1", "gw-greedy", NOV, 0).vmgateclient.amount == 0


def test_direct_client_has_no_reseller_leg(rater: Rater) -> None:
    call = rater.rate("442071234567", "acme-1", "gw-direct", NOV, 61)
    assert call.reseller is None
    assert call.margin == call.customer.amount - call.vmgateclient.amount


def test_reseller_without_plan_is_an_unrated_leg(rater: Rater) -> None:
    call = rater.rate("442071234567", "acme-1", "gw-resnoplan", NOV, 61)
    assert call.reseller is not None and call.reseller.unrated == "no_plan"
    assert call.reseller.amount == 0 and call.unrated


def test_tech_prefix_of_the_trunk_is_stripped(rater: Rater) -> None:
    call = rater.rate("0101#442071234567", "acme-2", "gw-01", NOV, 61)
    assert call.number == "442071234567" and call.customer.prefix == "4420"


@pytest.mark.parametrize(
    ("number", "trunk", "client", "customer", "vmgateclient", "reseller"),
    [
        ("442071234567", "nope", "gw-01", "unknown_trunk", None, None),
        ("442071234567", None, "gw-01", "unknown_trunk", None, None),
        ("442071234567", "acme-1", "nope", None, "unknown_client", "unknown_client"),
        ("442071234567", "bare", "gw-noplan", "no_plan", "no_plan", "direct"),
        ("33123456789", "acme-1", "gw-01", "no_rate", "no_rate", "no_rate"),
        ("anonymous", "acme-1", "gw-01", "no_number", "no_number", "no_number"),
    ],
)
def test_unrated_legs_carry_their_reason_and_post_nothing(
    rater: Rater,
    number: str,
    trunk: str | None,
    client: str,
    customer: str | None,
    vmgateclient: str | None,
    reseller: str | None,
) -> None:
    call = rater.rate(number, trunk, client, NOV, 61)
    assert call.customer.unrated == customer
    assert call.vmgateclient.unrated == vmgateclient
    if reseller == "direct":
        assert call.reseller is None
    else:
        assert call.reseller is not None and call.reseller.unrated == reseller
    legs = [leg for leg in (call.customer, call.vmgateclient, call.reseller) if leg is not None]
    assert all(leg.amount == 0 for leg in legs if not leg.rated)
    assert call.unrated
    assert call.margin == sum(
        leg.amount if leg.party is Party.CUSTOMER else -leg.amount for leg in legs
    )


def test_negative_margin_is_flagged(rater: Rater) -> None:
    call = rater.rate("441611234567", "acme-1", "gw-greedy", NOV, 61)
    # charge 0.02 × 120/60 = 0.04; payout 0.01 + 0.05 × 61/60 = 0.0608333… → 0.060833
    assert (call.customer.amount, call.vmgateclient.amount) == (40_000, 60_833)
    assert call.margin == -20_833 and call.negative_margin


def test_mis_scoped_plan_is_refused_at_construction() -> None:
    with pytest.raises(
        RaterError, match="trunk 'x' uses plan 'client' whose scope is vmgateclient"
    ):
        Rater(PLANS, {"x": TrunkTariff("x", "c", "client", "")}, {})


def test_rate_leg_and_accessors(rater: Rater) -> None:
    leg = rater.rate_leg(Party.VMGATECLIENT, "client", "4420", NOV, 1)
    assert leg.prefix == "4420" and leg.amount == 83  # 0.005/60 = 0.0000833… → 0.000083
    assert rater.rate_leg(Party.CUSTOMER, "missing", "44", NOV, 1).unrated == "no_plan"
    assert rater.plan("retail") is PLANS["retail"]
    assert rater.index("retail").lookup("4420", NOV) is not None
    with pytest.raises(RaterError):
        rater.rate_leg(Party.CUSTOMER, "client", "44", NOV, 1)


def test_positionally_built_records_equal_keyword_built_ones(rater: Rater) -> None:
    """The rater builds Leg and RatedCall positionally (tuple.__new__, for speed): a field added
    to either model must make this fail rather than shift or drop a value."""
    call = rater.rate("442071234567", "acme-1", "gw-direct", NOV, 61)
    leg = Leg(
        party=Party.CUSTOMER,
        plan="retail",
        unrated=None,
        prefix="4420",
        description="London",
        rate_per_min=Decimal("0.0123"),
        connection_fee=Decimal("0"),
        connection_sec=30,
        billing_block_sec=6,
        valid_since=parse_time("2026-01-01T00:00:00Z"),
        charged_sec=66,
        amount=13_530,
    )
    assert call.customer == leg and len(call.customer) == len(Leg._fields)
    assert call == RatedCall(
        number="442071234567",
        start=NOV,
        billsec=61,
        customer=leg,
        vmgateclient=call.vmgateclient,
        reseller=None,
        margin=13_530 - call.vmgateclient.amount,
    )
    assert len(call) == len(RatedCall._fields)


def test_memoised_legs_equal_fresh_ones(rater: Rater) -> None:
    first = rater.rate("442071234567", "acme-1", "gw-01", NOV, 61)
    fresh = Rater(PLANS, TRUNKS, CLIENTS).rate("442079999999", "acme-1", "gw-01", NOV, 61)
    again = rater.rate("442079999999", "acme-1", "gw-01", NOV, 61)
    assert first.customer == fresh.customer == again.customer
    assert again == fresh and isinstance(again, RatedCall)
    assert hash(again) == hash(fresh)


PROMO = plan(
    "promo",
    Scope.CUSTOMER,
    "44,UK,2026-01-01,,0.0200,,60,60",
    "4420,London promo,2026-06-01,2026-12-01,0.0100,,60,60",
    "4420,London 2027,2027-01-01,,0.0300,,60,60",
)
PROMO_TIMES = {
    "2027-02-01T00:00:00Z": ("4420", 30_000),  # the 2027 row: the code's last segment
    "2026-07-01T00:00:00Z": ("4420", 10_000),  # the promo, found by bisect
    "2026-12-15T00:00:00Z": ("44", 20_000),  # promo over, 2027 not yet: falls back to 44
    "2026-03-01T00:00:00Z": ("44", 20_000),  # before any 4420 row
}


@pytest.mark.parametrize("client", [None, "gw-01", "gw-direct"])
def test_a_number_seen_before_is_still_priced_by_the_row_valid_at_each_call(
    client: str | None,
) -> None:
    """The rater remembers a number's rows only from the latest change in their codes on
    (the route); a call before that is resolved at its own start, on every path."""
    plans = {**PLANS, "promo": PROMO}
    rater = Rater(plans, {"t": TrunkTariff("t", "acme", "promo", "")}, CLIENTS)
    for _ in range(2):  # the second round finds the number in the memos
        for when, (prefix, amount) in PROMO_TIMES.items():
            leg = rater.rate("442071234567", "t", client, parse_time(when), 60).customer
            assert (leg.prefix, leg.amount) == (prefix, amount), when


def test_the_route_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rating.rater._ROUTES_LIMIT", 8)
    rater = Rater(PLANS, TRUNKS, CLIENTS)
    for n in range(50):
        call = rater.rate(f"4420{n:08d}", "acme-1", "gw-01", NOV, 61)
        assert call.customer.prefix == "4420"
    assert 0 < len(rater._routes) <= 8
    rater._routes.clear()
    huge = "4420" + "1" * 10_000  # garbage from the wire: rated, never kept
    assert rater.rate(huge, "acme-1", "gw-01", NOV, 61).customer.prefix == "4420"
    assert not rater._routes
    assert rater.rate("999", "acme-1", "gw-01", NOV, 61).customer.unrated == "no_rate"
    assert not rater._routes  # a number some leg cannot price has no route


def test_a_number_on_another_trunk_or_client_is_priced_for_that_one() -> None:
    """A route belongs to one trunk and client: the same dialled text on a trunk with a
    tech prefix, or to another client, is normalised and priced afresh."""
    warm = Rater(PLANS, TRUNKS, CLIENTS)
    number = "0101#442071234567"
    for trunk, client in [
        ("acme-1", "gw-01"),
        ("acme-2", "gw-01"),
        ("acme-2", "gw-greedy"),
        ("acme-1", "gw-direct"),
        ("acme-1", "gw-01"),
    ]:
        call = warm.rate(number, trunk, client, NOV, 61)
        assert call == Rater(PLANS, TRUNKS, CLIENTS).rate(number, trunk, client, NOV, 61)
    assert warm.rate(number, "acme-2", "gw-01", NOV, 61).customer.prefix == "4420"
    assert warm.rate(number, "acme-1", "gw-01", NOV, 61).customer.unrated == "no_rate"  # 0101…


def test_sample_tenant_rates_the_readme_example() -> None:
    scopes = {
        "retail-a": Scope.CUSTOMER,
        "client-std": Scope.VMGATECLIENT,
        "reseller-alpha": Scope.RESELLER,
    }
    plans = {
        n: RatePlan(n, s, "USD", parse_deck((DECKS / f"{n}.csv").read_text(), f"decks/{n}.csv"))
        for n, s in scopes.items()
    }
    rater = Rater(
        plans,
        {"acme-1": TrunkTariff("acme-1", "acme", "retail-a", "")},
        {"gw-01": ClientTariff("gw-01", "client-std", "r-alpha", "reseller-alpha")},
    )
    call = rater.rate("442071234567", "acme-1", "gw-01", NOV, 61)
    assert call.customer.prefix == "44207" and call.customer.rated
    assert call.vmgateclient.rated and call.reseller is not None and call.reseller.rated
    assert call.margin > 0


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["442071234567", "441611234567", "4420", "44"]),
    st.sampled_from(["gw-01", "gw-direct", "gw-greedy"]),
    st.integers(0, 7_200),
    st.booleans(),
)
def test_each_leg_equals_the_reference_formula(
    number: str, client: str, billsec: int, zero_answered: bool
) -> None:
    rater = Rater(PLANS, TRUNKS, CLIENTS)
    answered = billsec > 0 or zero_answered
    call = rater.rate(number, "acme-1", client, NOV, billsec, answered)
    for leg in (call.customer, call.vmgateclient, call.reseller):
        if leg is None:
            continue
        assert leg.connection_sec is not None and leg.billing_block_sec is not None
        assert leg.rate_per_min is not None and leg.connection_fee is not None
        charged = charged_seconds(billsec, leg.connection_sec, leg.billing_block_sec)
        assert leg.charged_sec == charged
        assert leg.amount == amount_micros(leg.rate_per_min, leg.connection_fee, charged, answered)


def test_a_full_memo_is_held_then_refilled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full: no insertions for _HOLD × limit misses (numbers that never repeat cannot thrash
    it), then a fresh start; every answer is the same as without a memo."""
    monkeypatch.setattr("rating.rater._ROUTES_LIMIT", 4)
    monkeypatch.setattr("rating.rater._MEMO_LIMIT", 4)
    rater = Rater(PLANS, TRUNKS, CLIENTS)
    fresh = Rater(PLANS, TRUNKS, CLIENTS)
    numbers = [f"4420{n:08d}" for n in range(4)]
    for number in numbers:
        rater.rate(number, "acme-1", "gw-01", NOV, 61)
    assert set(rater._routes) == set(numbers)
    for n in range(4 * 4 - 1):  # misses while full: refused, the first four stay
        call = rater.rate(f"4421{n:08d}", "acme-1", "gw-01", NOV, 61 + n)
        assert call == fresh.rate(f"4421{n:08d}", "acme-1", "gw-01", NOV, 61 + n)
        assert set(rater._routes) == set(numbers)
    assert len(rater._plans["retail"].memo) <= 4
    rater.rate("442299999999", "acme-1", "gw-01", NOV, 61)  # the 16th miss: a fresh start
    assert list(rater._routes) == ["442299999999"]
    assert rater.rate(numbers[0], "acme-1", "gw-01", NOV, 61) == fresh.rate(
        numbers[0], "acme-1", "gw-01", NOV, 61
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["441", "4420", "442", "4421"]), st.integers(0, 400)),
        min_size=1,
        max_size=60,
    )
)
def test_the_leg_memo_never_confuses_two_rows_or_two_charges(
    calls: list[tuple[str, int]],
) -> None:
    """A warm rater answers every call as a rater that has seen nothing; the plans have
    few rows, so rows and charged seconds that a careless memo key folds together meet."""
    warm = Rater(PLANS, TRUNKS, CLIENTS)
    for prefix, billsec in calls:
        number = prefix + "1234567"
        fresh = Rater(PLANS, TRUNKS, CLIENTS)
        for client in ("gw-01", "gw-greedy"):
            assert warm.rate(number, "acme-1", client, NOV, billsec) == fresh.rate(
                number, "acme-1", client, NOV, billsec
            )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            # Few values, so that a number meets itself on another trunk, client or time.
            st.sampled_from(["442071234567", "+44 20 7123 4567", "0101#442071234567", "999"]),
            st.sampled_from(["acme-2", "promo-t", "bare", "nope"]),
            st.sampled_from(["gw-01", "gw-direct", "gw-resnoplan", "gw-promo-r", "nope"]),
            st.sampled_from(list(PROMO_TIMES)),
            st.integers(0, 200),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_a_warm_rater_answers_every_call_as_the_general_path(
    calls: list[tuple[str, str, str, str, int, bool]],
) -> None:
    """Whatever came before — other trunks, clients, times, number forms — a rater that
    learns routes answers as one that never does (every leg resolved at its own start)."""
    plans = {
        **PLANS,
        "promo": PROMO,
        "promo-r": RatePlan("promo-r", Scope.RESELLER, "USD", PROMO.destinations),
    }
    trunks = {**TRUNKS, "promo-t": TrunkTariff("promo-t", "acme", "promo", "")}
    clients = {**CLIENTS, "gw-promo-r": ClientTariff("gw-promo-r", "client", "r-g", "promo-r")}
    warm = Rater(plans, trunks, clients)
    general = Rater(plans, trunks, clients)
    general._routes_admit = lambda: False  # no route is ever learnt: leg by leg
    for number, trunk, client, when, billsec, answered in calls:
        start = parse_time(when)
        got = warm.rate(number, trunk, client, start, billsec, answered)
        assert got == general.rate(number, trunk, client, start, billsec, answered)
    assert not general._routes
