"""The transactions of SPEC §6, built from calls and payments, and the rules they obey.

Every builder returns a `Transaction` whose postings sum to zero; `check()` is the gate the
writer applies to anything submitted, built here or by hand.

Representation choices (see also ledger/README in the report):

- Postings never carry a zero amount. A call whose rated legs are all 0 (unanswered, or
  free) or that has no rated leg at all is a `call` transaction with **zero postings**: a
  transactions row, a calls row, no postings rows. It sums to zero trivially, is hashed and
  chained like any other, and keeps the call in history.
- Keys: `call:<uid>` for the first rating of a call; `pay:<reference>` for every payment
  and payout (the reference is the idempotency key, so one reference names one movement);
  adjustments carry the caller's key, which must not use the `call:` or `pay:` namespaces.
- A rerate of call `<uid>` whose current rating is `old` is two transactions:
  `call:<uid>:reversal:<d>` (kind `reversal`, the exact negation of `old`'s postings) and
  `call:<uid>:rerate:<d>` (kind `call`, the new rating), where `<d>` is
  `codec.rating_digest(old)`. The same (old, new) again is a no-op; (old, other) after
  (old, new) is a KeyConflict, so one rating can be reversed at most once. Submit the pair
  with `Ledger.submit_linked` so both land in one SQLite transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.codec import rating_digest
from ledger.errors import InvalidTransaction, NotZeroSum
from ledger.model import (
    AccountKind,
    CallEntry,
    PaymentEntry,
    Posting,
    Transaction,
    TxKind,
    account,
)
from rating.model import Leg, Party
from rating.units import TIME_MAX

MAX_AMOUNT = 1 << 62  # SQLite INTEGER is signed 64-bit; keep sums of two amounts in range
_ID_KINDS = frozenset(
    k.value for k in (AccountKind.CUSTOMER, AccountKind.CLIENT, AccountKind.RESELLER)
)
_BARE_KINDS = frozenset(k.value for k in (AccountKind.TENANT, AccountKind.EXTERNAL))
_PAYMENT_SHAPE = {
    TxKind.PAYMENT_IN: ("IN", "Customer", AccountKind.CUSTOMER, 1),
    TxKind.CLIENT_PAYOUT: ("OUT", "VMGateClient", AccountKind.CLIENT, -1),
    TxKind.RESELLER_PAYOUT: ("OUT", "Reseller", AccountKind.RESELLER, -1),
}
_HISTORY_ONLY = frozenset({TxKind.CALL, TxKind.REVERSAL})

# Postings `call_tx` derived, by id of the (immutable) CallEntry: `check` then compares by
# identity instead of deriving them a second time on the hot path. The entry itself is
# held, so its id cannot be reused while it is here; `check` takes it out, and the oldest
# go first when more than _BUILT_MAX wait (the check then derives them again: same answer).
_BUILT: dict[int, tuple[CallEntry, tuple[Posting, ...]]] = {}
_BUILT_MAX = 8192


_CALL_SIDES = tuple(
    (party, kind, f"{kind.value}:", sign)
    for party, kind, sign in (
        (Party.CUSTOMER, AccountKind.CUSTOMER, -1),
        (Party.VMGATECLIENT, AccountKind.CLIENT, 1),
        (Party.RESELLER, AccountKind.RESELLER, 1),
    )
)
_PARTIES = frozenset(Party)
_TENANT = account(AccountKind.TENANT)


def call_postings(entry: CallEntry) -> tuple[Posting, ...]:
    """SPEC §6 postings of a rated call: customer −C, client +P, reseller +R, tenant +margin.

    Only rated legs post; zero amounts are left out. Raises InvalidTransaction when a rated
    leg has no account to post to or when `entry.margin` disagrees with the legs.
    """
    # Hot path (once per call, twice before the writer's identity memo): a StrEnum member
    # and its value hash and compare alike, so legs are keyed by `leg.party` as it is.
    by_party: dict[str, Leg] = {}
    for leg in entry.legs:
        if leg.party not in _PARTIES:
            Party(leg.party)  # raises ValueError naming the bad party, as before
        by_party[leg.party] = leg
    if len(by_party) != len(entry.legs):
        raise InvalidTransaction(f"call {entry.call_uid}: legs: one leg per party at most")
    out: list[Posting] = []
    charge = payouts = 0
    idents = (entry.customer, entry.client, entry.reseller)
    for (party, kind, prefix, sign), ident in zip(_CALL_SIDES, idents, strict=True):
        found = by_party.get(party)
        if found is None or found.unrated is not None:
            continue
        if not ident or (party is Party.RESELLER and ident == "direct"):
            raise InvalidTransaction(
                f"call {entry.call_uid}: legs.{party.value}: is rated but the call has no "
                f"{kind.value} to post it to"
            )
        amount = found.amount
        if sign < 0:
            charge += amount
        else:
            payouts += amount
        if amount:
            out.append(Posting(prefix + ident, sign * amount))
    margin = charge - payouts
    if margin != entry.margin:
        raise InvalidTransaction(
            f"call {entry.call_uid}: margin: is {entry.margin} but the rated legs give "
            f"{charge} − {payouts} = {margin}"
        )
    if margin:
        out.append(Posting(_TENANT, margin))
    return tuple(out)


def call_tx(entry: CallEntry, currency: str, created: int) -> Transaction:
    """The `call:<uid>` transaction of a call's first rating (zero postings if nothing rated)."""
    postings = call_postings(entry)
    if len(_BUILT) >= _BUILT_MAX:
        _BUILT.pop(next(iter(_BUILT)), None)
    _BUILT[id(entry)] = (entry, postings)
    return Transaction(
        key=f"call:{entry.call_uid}",
        kind=TxKind.CALL,
        currency=currency,
        postings=postings,
        created=created,
        call=entry,
    )


def _derived_postings_match(tx: Transaction, entry: CallEntry) -> bool:
    built = _BUILT.pop(id(entry), None)
    if built is not None and built[0] is entry and built[1] is tx.postings:
        return True
    return tx.postings == call_postings(entry)


def _payment(
    kind: TxKind, target: str, amount: int, reference: str, created: int, currency: str
) -> Transaction:
    direction, target_type, acc_kind, sign = _PAYMENT_SHAPE[kind]
    if type(amount) is not int or amount <= 0:
        raise InvalidTransaction(
            f"{kind.value}: amount: {amount!r} micro-units; a payment needs a positive integer"
        )
    if not reference.strip():
        raise InvalidTransaction(
            f"{kind.value}: reference: is empty; the reference is the idempotency key"
        )
    if not target:
        raise InvalidTransaction(f"{kind.value}: target: is empty")
    acc = account(acc_kind, target)
    return Transaction(
        key=f"pay:{reference}",
        kind=kind,
        currency=currency,
        postings=(
            Posting(acc, sign * amount),
            Posting(account(AccountKind.EXTERNAL), -sign * amount),
        ),
        created=created,
        payment=PaymentEntry(direction, target_type, target, amount, reference),
    )


def payment_in(
    customer: str, amount: int, reference: str, created: int, currency: str
) -> Transaction:
    """Customer payment IN: customer +A, external −A, key `pay:<reference>`."""
    return _payment(TxKind.PAYMENT_IN, customer, amount, reference, created, currency)


def client_payout(
    client: str, amount: int, reference: str, created: int, currency: str
) -> Transaction:
    """VMGateClient payout OUT: client −A, external +A, key `pay:<reference>`."""
    return _payment(TxKind.CLIENT_PAYOUT, client, amount, reference, created, currency)


def reseller_payout(
    reseller: str, amount: int, reference: str, created: int, currency: str
) -> Transaction:
    """Reseller payout OUT: reseller −A, external +A, key `pay:<reference>`."""
    return _payment(TxKind.RESELLER_PAYOUT, reseller, amount, reference, created, currency)


def adjustment(
    postings: Iterable[Posting], reason: str, key: str, created: int, currency: str
) -> Transaction:
    """An adjustment or refund: any zero-sum set of postings, with a reason and a key."""
    tx = Transaction(
        key=key,
        kind=TxKind.ADJUSTMENT,
        currency=currency,
        postings=tuple(postings),
        created=created,
        reason=reason,
    )
    check(tx)
    return tx


def rerate(
    old: CallEntry, new: CallEntry, currency: str, created: int
) -> tuple[Transaction, Transaction]:
    """A rerate: the exact reversal of `old`'s postings, then `new` as a call transaction.

    Keys are derived from `old` (see the module docstring), so repeating a rerate is a no-op.
    """
    if old.call_uid != new.call_uid:
        raise InvalidTransaction(
            f"rerate: call_uid: old is {old.call_uid!r}, new is {new.call_uid!r}; a rerate "
            "replaces the rating of one call"
        )
    d = rating_digest(old)
    uid = old.call_uid
    reversal = Transaction(
        key=f"call:{uid}:reversal:{d}",
        kind=TxKind.REVERSAL,
        currency=currency,
        postings=tuple(Posting(p.account, -p.amount) for p in call_postings(old)),
        created=created,
        reason=f"rerate: reverses rating {d} of call {uid}",
    )
    again = Transaction(
        key=f"call:{uid}:rerate:{d}",
        kind=TxKind.CALL,
        currency=currency,
        postings=call_postings(new),
        created=created,
        reason=f"rerate: replaces rating {d}",
        call=new,
    )
    return reversal, again


def check_account(name: str) -> None:
    """Refuse a name other than `tenant`, `external`, `customer|client|reseller:<id>`."""
    kind, sep, ident = name.partition(":")
    if kind in _ID_KINDS:
        if not ident:
            raise InvalidTransaction(f"account {name!r}: {kind} needs an id ({kind}:<id>)")
    elif kind in _BARE_KINDS:
        if sep:
            raise InvalidTransaction(f"account {name!r}: {kind} takes no id")
    else:
        raise InvalidTransaction(
            f"account {name!r}: kind {kind!r} is unknown; use tenant, external, "
            "customer:<id>, client:<id> or reseller:<id>"
        )


def check(tx: Transaction) -> None:
    """Raise InvalidTransaction/NotZeroSum if `tx` breaks a ledger rule; else return."""
    where = f"transaction {tx.key!r}"
    if not tx.key:
        raise InvalidTransaction("transaction: key: is empty; every transaction needs a key")
    if not tx.currency:
        raise InvalidTransaction(f"{where}: currency: is empty")
    if type(tx.created) is int and not 0 <= tx.created <= TIME_MAX:
        # The chain hash packs it as a signed 64-bit integer: a time past that would stop the
        # writer in the middle of a group instead of refusing this one transaction.
        raise InvalidTransaction(
            f"{where}: created: {tx.created} µs is not a time between 1970 and 9999"
        )
    total = 0
    for i, p in enumerate(tx.postings):
        if type(p.amount) is not int or p.amount == 0 or not -MAX_AMOUNT < p.amount < MAX_AMOUNT:
            raise InvalidTransaction(
                f"{where}: postings[{i}].amount: {p.amount!r}; a posting is a non-zero integer "
                "number of micro-units"
            )
        check_account(p.account)
        total += p.amount
    if total != 0:
        raise NotZeroSum(f"{where}: postings sum to {total} micro-units, not 0")
    if not tx.postings and tx.kind not in _HISTORY_ONLY:
        raise InvalidTransaction(f"{where}: has no postings; only call history may be empty")
    _check_kind(tx, where)


def _check_kind(tx: Transaction, where: str) -> None:
    if tx.kind is TxKind.CALL:
        if tx.call is None or tx.payment is not None:
            raise InvalidTransaction(f"{where}: a call transaction carries exactly a call entry")
        base = f"call:{tx.call.call_uid}"
        if tx.key != base and not tx.key.startswith(base + ":rerate:"):
            raise InvalidTransaction(f"{where}: key: a call's key is {base!r} (or a rerate key)")
        if not _derived_postings_match(tx, tx.call):
            raise InvalidTransaction(f"{where}: postings: differ from the call's rated legs")
    elif tx.kind is TxKind.REVERSAL:
        if tx.call is not None or tx.payment is not None or ":reversal:" not in tx.key:
            raise InvalidTransaction(
                f"{where}: a reversal has a call:<uid>:reversal:<d> key and no entry"
            )
    elif tx.kind in _PAYMENT_SHAPE:
        direction, target_type, acc_kind, sign = _PAYMENT_SHAPE[tx.kind]
        pay = tx.payment
        if pay is None or tx.call is not None:
            raise InvalidTransaction(f"{where}: a {tx.kind.value} carries a payment entry")
        if (pay.direction, pay.target_type) != (direction, target_type):
            raise InvalidTransaction(
                f"{where}: payment: is {pay.direction} {pay.target_type}; a {tx.kind.value} "
                f"is {direction} {target_type}"
            )
        if type(pay.amount) is not int or pay.amount <= 0 or not pay.reference.strip():
            raise InvalidTransaction(
                f"{where}: payment: needs a positive amount and a non-empty reference"
            )
        expected = (
            Posting(account(acc_kind, pay.target), sign * pay.amount),
            Posting(account(AccountKind.EXTERNAL), -sign * pay.amount),
        )
        if tx.key != f"pay:{pay.reference}" or tx.postings != expected:
            raise InvalidTransaction(
                f"{where}: a {tx.kind.value} has key pay:<reference> and postings "
                f"{account(acc_kind, pay.target)} {sign * pay.amount:+d}, external "
                f"{-sign * pay.amount:+d}"
            )
    elif tx.kind is TxKind.ADJUSTMENT:
        if tx.call is not None or tx.payment is not None:
            raise InvalidTransaction(f"{where}: an adjustment carries no call or payment entry")
        if not tx.reason.strip():
            raise InvalidTransaction(f"{where}: reason: an adjustment needs a reason")
        if tx.key.startswith(("call:", "pay:")):
            raise InvalidTransaction(
                f"{where}: key: 'call:' and 'pay:' keys are reserved; pick e.g. 'adj:<ticket>'"
            )
