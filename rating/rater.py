"""The three-leg rater (SPEC §5): one call in, Customer charge and both payouts out.

A `Rater` is built from the plans and the trunk/client attachments of one configuration and
is immutable to its callers: a reload builds a new one beside the old and swaps the
reference. It builds one `PrefixIndex` per plan at construction.

Legs and reasons:

* customer: the trunk's plan, number normalised with the trunk's tech prefix.
* vmgateclient: the client's plan.
* reseller: the plan of the client's reseller; `RatedCall.reseller` is None when the client
  is Direct (no reseller). A client with a reseller that has no plan gets an unrated leg.
* unrated reasons, checked in this order: `unknown_trunk` / `unknown_client` (the party is
  not configured; for an unknown client the reseller leg is unrated too, since who the
  reseller is cannot be known), `no_plan` (nothing attached, or the name is not a plan),
  `no_number` (nothing left after normalisation), `no_rate` (no row matches at that time).
  Unrated legs carry amount 0 and post nothing; `margin` is customer − client − reseller over
  the amounts, i.e. exactly what the tenant account receives.

Speed (SPEC §10 asks for 1,000,000 legs/s): `Leg` and `RatedCall` are NamedTuples built with
`tuple.__new__`, and two bounded memos skip most of the work on real traffic, where the same
subscribers and destinations recur:

* routes: per dialled number (as the signalling carried it), the trunk and client it was last
  rated on, its normalised digits, the three rows that price it, and the span of start times
  over which those rows stay the ones `Code.resolve` would find (`_Route`, `Code.window`). A
  call on the same trunk and client that starts inside the span skips normalising and all
  three prefix searches: one dict probe instead of three. Any other call (another trunk or
  client, outside the span: a rerate of last year, a price change that has come into force)
  learns the route again; a leg without plan or rate, or an unknown trunk or client, takes
  the general path, leg by leg.
* legs, per plan, by (plan row, charged seconds): a leg is a pure function of those two, so
  60 s blocks and hot destinations hit; an unanswered call's three legs are kept on its
  route.

Both are invisible to callers (the objects are immutable; a reload builds a new `Rater`) and
bounded whatever the traffic: a memo fills to its limit, is then held as it is (no
insertions) for four times as many misses, and then starts afresh. Holding is for the
traffic a memo cannot help — every dialled number new, as on an A–Z wholesale route:
inserting each miss and clearing the dict whenever it filled cost more than the lookups it
saved (the clear frees 65,536 cold entries at once), 4.6 instead of 2.6 µs a leg in
`bench/rating.py`'s uniform workload. Traffic that repeats fills the memo with what is
frequent and hits it while held; the periodic fresh start follows it when it drifts.
Memory, every memo full (three 100,000-row plans, 1.2 million calls of both `bench/rating.py`
workloads): 46 MB, plus ~4 MB of dialled-number keys when they are not shared with the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from rating.index import NEVER_AFTER, NEVER_BEFORE, IndexedRow, PrefixIndex
from rating.model import Leg, Party, RatedCall, RatePlan, Scope
from rating.number import normalise
from rating.units import EpochUs

UNKNOWN_TRUNK = "unknown_trunk"
UNKNOWN_CLIENT = "unknown_client"
NO_PLAN = "no_plan"
NO_RATE = "no_rate"
NO_NUMBER = "no_number"

_PARTY_OF_SCOPE = {
    Scope.CUSTOMER: Party.CUSTOMER,
    Scope.VMGATECLIENT: Party.VMGATECLIENT,
    Scope.RESELLER: Party.RESELLER,
}
_SCOPE_OF_PARTY = {party: scope for scope, party in _PARTY_OF_SCOPE.items()}
_MEMO_LIMIT = 1 << 16  # legs memoised per plan (then held: see _Admission)
_HOLD = 4  # a full memo is kept, unchanged, for this many times its limit in misses
_ROUTES_LIMIT = 1 << 16  # numbers whose rows on their last trunk and client are remembered
_ROUTES_CHARS = 64  # longer dialled numbers (a URI with parameters, garbage) are not kept
_CHARGED_MAX = 1 << 24  # longer charges (~194 days) are priced, not memoised


# Rows are built with tuple.__new__: a NamedTuple's generated __new__ is a Python function
# whose call costs as much as the tuple it makes.
_tuple = tuple.__new__


class RaterError(ValueError):
    """The attachments handed to a Rater contradict the plans' scopes."""


@dataclass(frozen=True, slots=True)
class TrunkTariff:
    """What rating needs to know about a Customer trunk."""

    trunk_id: str
    customer_id: str
    plan: str | None
    tech_prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClientTariff:
    """What rating needs to know about a VMGateClient and its reseller (None = Direct)."""

    client_id: str
    plan: str | None
    reseller_id: str | None
    reseller_plan: str | None


class _Admission:
    """When a memo may take a new entry: below its limit, else once per refill cycle.

    Only the miss path asks (a hit costs nothing extra). A full memo refuses `hold` misses,
    then is cleared and admits again.
    """

    __slots__ = ("held", "hold", "limit", "memo")

    def __init__(self, memo: dict[Any, Any], limit: int) -> None:
        self.memo = memo
        self.limit = limit
        self.hold = _HOLD * limit
        self.held = 0

    def admit(self) -> bool:
        """Whether the caller should store the value it just computed."""
        if len(self.memo) < self.limit:
            return True
        self.held += 1
        if self.held < self.hold:
            return False
        self.memo.clear()
        self.held = 0
        return True


class _PlanRater:
    """One plan's index, its party, constant unrated legs and its leg memo."""

    __slots__ = (
        "index",
        "memo",
        "memo_admit",
        "name",
        "no_number",
        "no_rate",
        "party",
        "stride",
    )

    def __init__(self, plan: RatePlan) -> None:
        self.name = plan.name
        self.party = _PARTY_OF_SCOPE[plan.scope]
        self.index = PrefixIndex.build(plan)
        self.no_rate = Leg(self.party, plan.name, unrated=NO_RATE)
        self.no_number = Leg(self.party, plan.name, unrated=NO_NUMBER)
        self.memo: dict[int, Leg] = {}
        # Leg memo key = charged * stride + row serial: unique (serial < stride), and its low
        # bits, which pick a CPython dict's first slot (an int hashes to itself), vary with
        # both parts; odd, so charged * stride alone already spreads. `serial << 24 | charged`
        # sent every unanswered leg (charged 0) of every row to one slot (3-11% of a call).
        self.stride = len(plan.destinations) | 1
        self.memo_admit = _Admission(self.memo, _MEMO_LIMIT).admit

    def leg(self, digits: str, start: EpochUs, billsec: int, fee_only: bool = False) -> Leg:
        """This plan's leg for a call (digits already normalised and non-empty).

        `fee_only`: answered with billsec 0 (the answer and the end at the same microsecond):
        0 seconds charged, the connection fee due (SPEC §5).
        """
        code = self.index.longest(digits)
        if code is None:
            return self.no_rate
        row = code.last_row if start >= code.last_start else None
        if row is None:
            row = code.resolve(start)  # a bisect, or a shorter code's row
            if row is None:
                return self.no_rate
        return self.price(row, billsec, fee_only)

    def price(self, row: IndexedRow, billsec: int, fee_only: bool = False) -> Leg:
        """This plan's leg for a call whose number `row` prices (memoised)."""
        if billsec <= 0:
            if fee_only:
                return self._make(row, 0, True)  # rare: not worth a memo key of its own
            charged = 0
        else:
            # tariff.charged_seconds, inlined (the tests hold the two equal).
            conn = row.connection_sec
            charged = conn if billsec < conn else billsec
            block = row.billing_block_sec
            if block > 0 and charged > conn:
                charged = conn - (-(charged - conn) // block) * block
        if charged >= _CHARGED_MAX:
            return self._make(row, charged)
        key = charged * self.stride + row.serial
        leg = self.memo.get(key)
        if leg is None:
            leg = self._make(row, charged)
            if self.memo_admit():
                self.memo[key] = leg
        return leg

    def _make(self, row: IndexedRow, charged: int, answered: bool = False) -> Leg:
        dest = row.dest
        amount = (
            (row.fee2 + row.rate2 * charged + row.den) // row.den2 if charged or answered else 0
        )
        return _tuple(
            Leg,
            (
                self.party,
                self.name,
                None,
                dest.code,
                dest.description,
                dest.rate_per_min,
                dest.connection_fee,
                dest.connection_sec,
                dest.billing_block_sec,
                dest.valid_since,
                charged,
                amount,
            ),
        )


Price = Callable[[IndexedRow, int, bool], Leg]


def _unpriced(row: IndexedRow, billsec: int, fee_only: bool) -> Leg:
    """`price` of a party with no plan: never called, since no route is learnt for it."""
    raise AssertionError(f"no plan to price {row!r}")


class _Trunk:
    __slots__ = ("plan", "price", "tech_prefix", "unrated")

    def __init__(self, tech_prefix: str, plan: _PlanRater | None, unrated: Leg) -> None:
        self.tech_prefix = tech_prefix
        self.plan = plan
        self.unrated = unrated  # the leg to use when plan is None
        self.price: Price = _unpriced if plan is None else plan.price  # bound once


class _Client:
    __slots__ = ("plan", "price", "reseller_plan", "reseller_price", "reseller_unrated", "unrated")

    def __init__(
        self,
        plan: _PlanRater | None,
        unrated: Leg,
        reseller_plan: _PlanRater | None,
        reseller_unrated: Leg | None,
    ) -> None:
        self.plan = plan
        self.unrated = unrated
        self.reseller_plan = reseller_plan
        self.reseller_unrated = reseller_unrated  # None with reseller_plan None: Direct
        self.price: Price = _unpriced if plan is None else plan.price
        self.reseller_price: Price = _unpriced if reseller_plan is None else reseller_plan.price


class _Route(NamedTuple):
    """How one number is priced on one trunk and client, for calls starting in [lo, hi).

    Each row is what `Code.resolve` finds for the number in its plan at any instant of the
    span (`Code.window`: the intersection of the three plans' spans), so a future price
    change or the end of a promo bounds it and the first call past the bound learns the route
    again. `idle` holds the three legs of an unanswered call (0 seconds, nothing due), nearly
    half of all calls.
    """

    trunk: _Trunk
    client: _Client
    digits: str  # the number normalised for the trunk
    lo: EpochUs  # calls starting in [lo, hi) are priced by these rows
    hi: EpochUs
    customer: IndexedRow
    vmgateclient: IndexedRow
    reseller: IndexedRow | None  # None: the client is Direct
    idle: tuple[Leg, Leg, Leg | None] | None  # built by the first unanswered call


class Rater:
    """Rates calls for the three parties from in-memory indexes (one per plan)."""

    __slots__ = (
        "_clients",
        "_plans",
        "_routes",
        "_routes_admit",
        "_trunks",
        "_unknown_client",
        "_unknown_trunk",
    )

    def __init__(
        self,
        plans: Mapping[str, RatePlan],
        trunks: Mapping[str, TrunkTariff],
        clients: Mapping[str, ClientTariff],
    ) -> None:
        self._plans = {name: _PlanRater(plan) for name, plan in plans.items()}
        for name, plan in plans.items():
            if plan.name != name:
                raise RaterError(f"plan {plan.name!r} is registered under the name {name!r}")
        self._trunks = {tid: self._trunk(t) for tid, t in trunks.items()}
        self._clients = {cid: self._client(c) for cid, c in clients.items()}
        self._routes: dict[str, _Route] = {}
        self._routes_admit = _Admission(self._routes, _ROUTES_LIMIT).admit
        self._unknown_trunk = Leg(Party.CUSTOMER, None, unrated=UNKNOWN_TRUNK)
        self._unknown_client = (
            Leg(Party.VMGATECLIENT, None, unrated=UNKNOWN_CLIENT),
            Leg(Party.RESELLER, None, unrated=UNKNOWN_CLIENT),
        )

    def _attached(self, who: str, name: str | None, party: Party) -> tuple[_PlanRater | None, Leg]:
        """The plan to rate with, and the no_plan leg to use when there is none."""
        no_plan = Leg(party, name, unrated=NO_PLAN)
        if name is None or name not in self._plans:
            return None, no_plan
        plan = self._plans[name]
        if plan.party is not party:
            raise RaterError(
                f"{who} uses plan {name!r} whose scope is {_SCOPE_OF_PARTY[plan.party]}; "
                f"it needs a {_SCOPE_OF_PARTY[party]} plan"
            )
        return plan, no_plan

    def _trunk(self, t: TrunkTariff) -> _Trunk:
        plan, unrated = self._attached(f"trunk {t.trunk_id!r}", t.plan, Party.CUSTOMER)
        return _Trunk(t.tech_prefix, plan, unrated)

    def _client(self, c: ClientTariff) -> _Client:
        plan, unrated = self._attached(f"client {c.client_id!r}", c.plan, Party.VMGATECLIENT)
        if c.reseller_id is None:
            return _Client(plan, unrated, None, None)
        rplan, runrated = self._attached(
            f"reseller {c.reseller_id!r}", c.reseller_plan, Party.RESELLER
        )
        return _Client(plan, unrated, rplan, runrated)

    def plan(self, name: str) -> RatePlan:
        """The plan of that name (KeyError if there is none)."""
        return self._plans[name].index.plan

    def index(self, name: str) -> PrefixIndex:
        """The prefix index of the plan of that name (KeyError if there is none)."""
        return self._plans[name].index

    @property
    def plan_names(self) -> tuple[str, ...]:
        """Names of the plans this rater holds."""
        return tuple(self._plans)

    def rate_leg(
        self, party: Party, plan: str | None, digits: str, start: EpochUs, billsec: int
    ) -> Leg:
        """One party's leg from one plan, for already-normalised digits."""
        if plan is None or plan not in self._plans:
            return Leg(party, plan, unrated=NO_PLAN)
        p = self._plans[plan]
        if p.party is not party:
            raise RaterError(f"plan {plan!r} prices {p.party} legs, not {party}")
        if not digits:
            return p.no_number
        return p.leg(digits, start, billsec)

    def rate(
        self,
        number: str,
        trunk: str | None,
        client: str | None,
        start: EpochUs,
        billsec: int,
        answered: bool | None = None,
    ) -> RatedCall:
        """Rate one call for all three parties.

        `answered` None means `billsec > 0`. An unanswered call costs 0 on every leg; an
        answered one with billsec 0 costs the connection fee (0 seconds charged).
        """
        fee_only = answered is True and billsec <= 0
        reseller: Leg | None
        t = self._trunks.get(trunk) if trunk is not None else None
        c = self._clients.get(client) if client is not None else None
        if t is not None and c is not None:
            # The common case: a configured trunk and client, a number seen before on them.
            route = self._routes.get(number)
            if route is None:
                # A full memo that is being held learns nothing: numbers that never come
                # back (an A-Z route) must not pay for a route they will not use again.
                if self._routes_admit():
                    route = self._route(number, t, c, start)
            elif route.trunk is not t or route.client is not c or not route.lo <= start < route.hi:
                route = self._route(number, t, c, start)
            if route is not None:
                _, _, digits, _, _, crow, vrow, rrow, idle = route
                if billsec <= 0 and not fee_only:
                    if idle is None:
                        idle = self._idle(number, route)
                    customer, vmgateclient, reseller = idle
                    margin = 0
                else:
                    customer = t.price(crow, billsec, fee_only)
                    vmgateclient = c.price(vrow, billsec, fee_only)
                    margin = customer.amount - vmgateclient.amount
                    if rrow is None:
                        reseller = None
                    else:
                        reseller = c.reseller_price(rrow, billsec, fee_only)
                        margin -= reseller.amount
                return _tuple(
                    RatedCall,
                    (digits, start, billsec, customer, vmgateclient, reseller, margin),
                )
        if t is None:
            digits = normalise(number)
            customer = self._unknown_trunk
        else:
            digits = normalise(number, t.tech_prefix)
            tp = t.plan
            if tp is None:
                customer = t.unrated
            elif digits:
                customer = tp.leg(digits, start, billsec, fee_only)
            else:
                customer = tp.no_number
        if c is None:
            vmgateclient, reseller = self._unknown_client
        else:
            cp = c.plan
            if cp is None:
                vmgateclient = c.unrated
            elif digits:
                vmgateclient = cp.leg(digits, start, billsec, fee_only)
            else:
                vmgateclient = cp.no_number
            rp = c.reseller_plan
            if rp is None:
                reseller = c.reseller_unrated
            elif digits:
                reseller = rp.leg(digits, start, billsec, fee_only)
            else:
                reseller = rp.no_number
        margin = customer.amount - vmgateclient.amount
        if reseller is not None:
            margin -= reseller.amount
        return _tuple(
            RatedCall, (digits, start, billsec, customer, vmgateclient, reseller, margin)
        )

    def _route(self, number: str, t: _Trunk, c: _Client, start: EpochUs) -> _Route | None:
        """Learn how `number` is priced on this trunk and client around `start`; None when
        some leg has no plan or no rate (the general path says which, leg by leg)."""
        tp, cp, rp = t.plan, c.plan, c.reseller_plan
        if tp is None or cp is None or len(number) > _ROUTES_CHARS:
            return None
        if rp is None and c.reseller_unrated is not None:
            return None  # a reseller without a plan: an unrated leg
        digits = normalise(number, t.tech_prefix)
        if not digits:
            return None
        lo, hi = NEVER_BEFORE, NEVER_AFTER
        rows: list[IndexedRow] = []
        for plan in (tp, cp) if rp is None else (tp, cp, rp):
            code = plan.index.longest(digits)
            if code is None:
                return None
            row, since, until = code.window(start)
            if row is None:
                return None
            rows.append(row)
            lo, hi = max(lo, since), min(hi, until)
        rr = None if rp is None else rows[2]
        route = _tuple(_Route, (t, c, digits, lo, hi, rows[0], rows[1], rr, None))
        self._routes[number] = route
        return route

    def _idle(self, number: str, route: _Route) -> tuple[Leg, Leg, Leg | None]:
        """The legs of an unanswered call on `route`, kept with it from now on."""
        c = route.client
        rrow = route.reseller
        idle = (
            route.trunk.price(route.customer, 0, False),
            c.price(route.vmgateclient, 0, False),
            None if rrow is None else c.reseller_price(rrow, 0, False),
        )
        if self._routes.get(number) is route:
            self._routes[number] = route._replace(idle=idle)
        return idle
