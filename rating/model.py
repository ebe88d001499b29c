"""The rating data model: plans, destination rows, rated legs and rated calls.

These frozen records are the contract between `rating/` (which makes them), `ledger/` (which
stores them in call history) and `vmgated/` (which prints and exports them). Money fields that
come from a deck keep their exact `Decimal`; every computed amount is integer micro-units.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

from rating.units import EpochUs


class Scope(StrEnum):
    """Who a plan prices: fixed when the plan is created (seeds: 'Scope cannot be changed')."""

    CUSTOMER = "customer"
    RESELLER = "reseller"
    VMGATECLIENT = "vmgateclient"


class Party(StrEnum):
    """The three legs every call is rated for."""

    CUSTOMER = "customer"
    VMGATECLIENT = "vmgateclient"
    RESELLER = "reseller"


@dataclass(frozen=True, slots=True)
class Destination:
    """One row of a rate deck. `valid_since` inclusive, `valid_until` exclusive (EpochUs)."""

    code: str
    description: str
    valid_since: EpochUs
    valid_until: EpochUs | None
    rate_per_min: Decimal
    connection_fee: Decimal
    connection_sec: int
    billing_block_sec: int
    origin: str = ""  # "decks/retail-a.csv:17", for error messages


@dataclass(frozen=True, slots=True)
class RatePlan:
    """A named price list with a fixed scope and currency."""

    name: str
    scope: Scope
    currency: str
    destinations: tuple[Destination, ...]


class Leg(NamedTuple):
    """One party's rating of one call: either rated (amount set) or unrated (reason set).

    A NamedTuple rather than a frozen dataclass: the rater builds up to three per call and a
    dataclass costs ~1 µs to build against ~0.15 µs for a tuple (SPEC §10's legs/s target).
    """

    party: Party
    plan: str | None
    unrated: str | None = None  # no_plan, no_rate, unknown_trunk, unknown_client, ...
    prefix: str | None = None
    description: str | None = None
    rate_per_min: Decimal | None = None
    connection_fee: Decimal | None = None
    connection_sec: int | None = None
    billing_block_sec: int | None = None
    valid_since: EpochUs | None = None  # identifies the deck row applied, with plan+prefix
    charged_sec: int = 0
    amount: int = 0  # micro-units, half-up rounded once per leg

    @property
    def rated(self) -> bool:
        """True when a destination row priced this leg."""
        return self.unrated is None


class RatedCall(NamedTuple):
    """The three legs of one call and the tenant's margin (charge − payouts, rated legs only).

    A NamedTuple for the same reason as `Leg`: one is built per rated call.
    """

    number: str  # normalised digits that were matched
    start: EpochUs
    billsec: int
    customer: Leg
    vmgateclient: Leg
    reseller: Leg | None  # None: the client is Direct (no reseller)
    margin: int  # micro-units: customer.amount − vmgateclient.amount − reseller.amount

    @property
    def negative_margin(self) -> bool:
        """SPEC §5: a call whose payouts exceed its charge is counted and flagged."""
        return self.margin < 0

    @property
    def unrated(self) -> bool:
        """True when any leg that should have been priced was not."""
        legs = (self.customer, self.vmgateclient, self.reseller)
        return any(leg is not None and not leg.rated for leg in legs)
