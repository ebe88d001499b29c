"""The ledger's records: postings, transactions, call history entries, payments.

A transaction is a set of postings in integer micro-units that sums to exactly zero, with a
unique idempotency key (`call:<uid>`, `pay:<ref>`, ...). These records are what callers hand to
the writer and what the read functions return; the SQLite schema mirrors them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rating.model import Leg
from rating.units import EpochUs


class TxKind(StrEnum):
    """Transaction kinds of SPEC §6."""

    CALL = "call"
    PAYMENT_IN = "payment_in"
    CLIENT_PAYOUT = "client_payout"
    RESELLER_PAYOUT = "reseller_payout"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"  # first half of a rerate: exact negation of an earlier call tx


class AccountKind(StrEnum):
    """Account families; an account name is `kind` or `kind:id`."""

    TENANT = "tenant"
    EXTERNAL = "external"
    CUSTOMER = "customer"
    CLIENT = "client"
    RESELLER = "reseller"


def account(kind: AccountKind, ident: str | None = None) -> str:
    """The account name for a kind and id: `tenant`, `external`, `customer:acme`."""
    return kind.value if ident is None else f"{kind.value}:{ident}"


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a transaction: an account and a signed amount in micro-units."""

    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class CallEntry:
    """One call as call history keeps it (every field of the `calls` shape of SPEC §8)."""

    call_uid: str
    call_id: str
    trunk: str | None
    customer: str | None
    client: str | None
    network: str | None
    reseller: str  # "direct" when none
    caller: str
    callee: str
    number: str  # normalised digits used for rating
    start: EpochUs
    answer: EpochUs | None
    end: EpochUs
    billsec: int
    sip_code: int
    disposition: str
    legs: tuple[Leg, ...]
    margin: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PaymentEntry:
    """Money recorded as received from a Customer or sent to a client or reseller."""

    direction: str  # "IN" | "OUT"
    target_type: str  # "Customer" | "VMGateClient" | "Reseller"
    target: str
    amount: int  # micro-units, positive
    reference: str


@dataclass(frozen=True, slots=True)
class Transaction:
    """A zero-sum set of postings with an idempotency key; optionally a call or payment."""

    key: str
    kind: TxKind
    currency: str
    postings: tuple[Posting, ...]
    created: EpochUs
    reason: str = ""
    call: CallEntry | None = None
    payment: PaymentEntry | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a durable commit returns: the chain position and whether the key already existed."""

    seq: int
    key: str
    hash: str
    existed: bool
