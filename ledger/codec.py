"""Canonical encoding of a transaction for hashing, and the row shapes of the store.

The hash covers exactly what is stored: a transaction is turned into row tuples once, the
canonical bytes are JSON of those tuples (fixed field order, no whitespace, UTF-8), and the
verifier rebuilds the same tuples from the rows it reads back. Nothing that is not stored is
hashed and nothing stored escapes the hash.

Two digests per transaction:

- `digest = SHA-256(canonical content)` where the content is key, kind, currency, reason,
  postings, call row and payment row — everything except `created` and `seq`. Two
  submissions with the same key are "the same transaction" when their digests are equal, so
  a retried `pay` a minute later (another `created`) is still a no-op, as in TigerBeetle where
  the timestamp is the ledger's, not part of the client's identity of a transfer.
- `hash = SHA-256(prev_hash ‖ seq ‖ created ‖ digest)` (seq and created as signed 64-bit
  big-endian): the chain. The first transaction's `prev_hash` is 32 zero bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from ledger.model import CallEntry, PaymentEntry, Transaction
from rating.model import Leg, Party

GENESIS_HASH = "0" * 64
CANONICAL_VERSION = 1

# The leg columns, in this order, exist once per party with the party's prefix.
LEG_FIELDS = (
    "plan",
    "unrated",
    "prefix",
    "description",
    "rate_per_min",
    "connection_fee",
    "connection_sec",
    "billing_block_sec",
    "valid_since",
    "charged_sec",
    "amount",
)
PARTY_PREFIX = {Party.CUSTOMER: "c", Party.VMGATECLIENT: "v", Party.RESELLER: "r"}
PARTY_ORDER = (Party.CUSTOMER, Party.VMGATECLIENT, Party.RESELLER)

CALL_FIELDS = (
    "call_uid",
    "call_id",
    "trunk",
    "customer",
    "client",
    "network",
    "reseller",
    "caller",
    "callee",
    "number",
    "start_at",
    "answer_at",
    "end_at",
    "billsec",
    "sip_code",
    "disposition",
    "margin",
    "flags",
    "leg_parties",
    *(f"{PARTY_PREFIX[p]}_{f}" for p in PARTY_ORDER for f in LEG_FIELDS),
)
"""The calls table's columns after `seq`, in the order of the canonical call row."""

PAYMENT_FIELDS = ("direction", "target_type", "target", "amount", "reference")
"""The payments table's columns after `seq`, in the order of the canonical payment row."""

_NOT_NULL = frozenset(CALL_FIELDS[:19]) - {"trunk", "customer", "client", "network", "answer_at"}
_INT_FIELDS = frozenset(
    {"start_at", "answer_at", "end_at", "billsec", "sip_code", "margin"}
    | {f"{p}_{f}" for p in "cvr" for f in LEG_FIELDS[6:]}
)
COLUMN_TYPES: tuple[tuple[str, type, bool], ...] = tuple(
    (name, int if name in _INT_FIELDS else str, name not in _NOT_NULL) for name in CALL_FIELDS
)
"""(column, Python type, nullable) of every calls column, as the STRICT table declares it."""

_NO_LEG: tuple[None, ...] = (None,) * len(LEG_FIELDS)
_SEQ_CREATED = struct.Struct(">qq")
# One encoder, built once: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _c_encoder() -> Any:
    # `JSONEncoder.encode` builds the C encoder (and a dict for its cycle check) on every
    # call: ~1 µs of a call document's 5. The same C encoder with the same options, built
    # once, writes the same bytes; the documents are rows, never cyclic.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return None
    return make(None, _JSON.default, json.encoder.encode_basestring, None, ":", ",",
                False, False, True)  # fmt: skip


_C_JSON = _c_encoder()


def _json_text(doc: list[Any]) -> str:
    """`_JSON.encode(doc)`, faster when the C encoder is there."""
    return _JSON.encode(doc) if _C_JSON is None else "".join(_C_JSON(doc, 0))

CallRow = tuple[Any, ...]
PaymentRow = tuple[str, str, str, int, str]
RateRow = tuple[str, str, int]  # (plan, prefix, valid_since) of a deck row that priced a leg

# Offsets of each party's (plan, unrated, prefix, valid_since) inside a call row.
_LEG_BASE = len(CALL_FIELDS) - len(LEG_FIELDS) * len(PARTY_ORDER)
RATE_OFFSETS = tuple(
    tuple(
        _LEG_BASE + len(LEG_FIELDS) * i + LEG_FIELDS.index(name)
        for name in ("plan", "unrated", "prefix", "valid_since")
    )
    for i in range(len(PARTY_ORDER))
)
_PARTY_SLOT: dict[str, int] = {p.value: i for i, p in enumerate(PARTY_ORDER)}
# Shapes (Python type of every column) of call rows already found acceptable: the check
# depends on nothing else, so one hit replaces 53 comparisons. Bounded: shapes are few.
_OK_SHAPES: set[tuple[type, ...]] = set()
_OK_SHAPES_MAX = 4096


class Encoded(NamedTuple):
    """A transaction as rows (without `seq`) plus its content digest: `encode`'s answer.

    The reference encoding, for the benches and tests. The writer does not build one: the
    daemon sends `wire_rows` and the write process hashes them (ledger/planner.py), with the
    same `canonical` text and the same SHA-256.
    """

    tx: Transaction
    kind: str
    postings: tuple[tuple[str, int], ...]
    call_row: CallRow | None
    payment_row: PaymentRow | None
    digest: bytes
    digest_hex: str
    rates: tuple[RateRow, ...]
    """Deck rows that priced a leg of this call (kind `call` only), for `used_rates`."""


def _dec(value: Decimal | None) -> str | None:
    # str() of a Decimal round-trips exactly through Decimal(str), trailing zeros included.
    return None if value is None else str(value)


def leg_row(leg: Leg | None) -> tuple[Any, ...]:
    """The eleven leg columns of one party (all NULL when the call has no such leg)."""
    if leg is None:
        return _NO_LEG
    return (
        leg.plan,
        leg.unrated,
        leg.prefix,
        leg.description,
        _dec(leg.rate_per_min),
        _dec(leg.connection_fee),
        leg.connection_sec,
        leg.billing_block_sec,
        leg.valid_since,
        leg.charged_sec,
        leg.amount,
    )


def call_row(entry: CallEntry) -> CallRow:
    """The calls-table row of a call entry (without `seq`), in `CALL_FIELDS` order."""
    slots = [_NO_LEG, _NO_LEG, _NO_LEG]
    names: list[str] = []
    for leg in entry.legs:
        slot = _PARTY_SLOT.get(leg.party)
        if slot is None:
            slot = _PARTY_SLOT[Party(leg.party).value]  # raises ValueError for a non-party
        slots[slot] = leg_row(leg)  # a later leg of the same party wins, as in a dict
        names.append(PARTY_ORDER[slot].value)
    return (
        entry.call_uid,
        entry.call_id,
        entry.trunk,
        entry.customer,
        entry.client,
        entry.network,
        entry.reseller,
        entry.caller,
        entry.callee,
        entry.number,
        entry.start,
        entry.answer,
        entry.end,
        entry.billsec,
        entry.sip_code,
        entry.disposition,
        entry.margin,
        _json_text(list(entry.flags)) if entry.flags else "[]",
        ",".join(names),
        *slots[0],
        *slots[1],
        *slots[2],
    )


def _leg_from(party: Party, values: Sequence[Any]) -> Leg:
    (plan, unrated, prefix, description, rate, fee, conn_sec, block, since, charged, amount) = (
        values
    )
    return Leg(
        party=party,
        plan=plan,
        unrated=unrated,
        prefix=prefix,
        description=description,
        rate_per_min=None if rate is None else Decimal(rate),
        connection_fee=None if fee is None else Decimal(fee),
        connection_sec=conn_sec,
        billing_block_sec=block,
        valid_since=since,
        charged_sec=charged,
        amount=amount,
    )


def call_from_row(row: Sequence[Any]) -> CallEntry:
    """Rebuild a CallEntry from a calls-table row in `CALL_FIELDS` order (without `seq`)."""
    head = len(CALL_FIELDS) - len(LEG_FIELDS) * len(PARTY_ORDER)
    parties = [Party(p) for p in str(row[18]).split(",") if p]
    width = len(LEG_FIELDS)
    starts = {p: head + width * i for i, p in enumerate(PARTY_ORDER)}
    legs = tuple(_leg_from(p, row[starts[p] : starts[p] + width]) for p in parties)
    return CallEntry(
        call_uid=row[0],
        call_id=row[1],
        trunk=row[2],
        customer=row[3],
        client=row[4],
        network=row[5],
        reseller=row[6],
        caller=row[7],
        callee=row[8],
        number=row[9],
        start=row[10],
        answer=row[11],
        end=row[12],
        billsec=row[13],
        sip_code=row[14],
        disposition=row[15],
        margin=row[16],
        flags=tuple(json.loads(row[17])),
        legs=legs,
    )


def payment_row(payment: PaymentEntry) -> PaymentRow:
    """The payments-table row of a payment (without `seq`), in `PAYMENT_FIELDS` order."""
    return (
        payment.direction,
        payment.target_type,
        payment.target,
        payment.amount,
        payment.reference,
    )


def payment_from_row(row: Sequence[Any]) -> PaymentEntry:
    """Rebuild a PaymentEntry from a payments-table row in `PAYMENT_FIELDS` order."""
    return PaymentEntry(
        direction=row[0], target_type=row[1], target=row[2], amount=row[3], reference=row[4]
    )


def canonical(
    key: str,
    kind: str,
    currency: str,
    reason: str,
    postings: Sequence[Sequence[Any]],
    call: Sequence[Any] | None,
    payment: Sequence[Any] | None,
) -> bytes:
    """The canonical bytes of a transaction's content (what `digest` hashes)."""
    # JSON writes a tuple exactly as a list, so tuples and lists go in as they are.
    doc = [
        CANONICAL_VERSION,
        key,
        kind,
        currency,
        reason,
        postings if type(postings) in (list, tuple) else [list(p) for p in postings],
        call if call is None or type(call) in (list, tuple) else list(call),
        payment if payment is None or type(payment) in (list, tuple) else list(payment),
    ]
    return _json_text(doc).encode("utf-8")


def check_types(tx: Transaction, crow: CallRow | None, prow: PaymentRow | None) -> None:
    """Raise TypeError naming the first field whose Python type the STRICT tables would refuse.

    One bad value would otherwise fail the whole group commit it travels in.
    """
    texts: tuple[tuple[str, object], ...] = (
        ("key", tx.key),
        ("currency", tx.currency),
        ("reason", tx.reason),
    )
    for label, text in texts:
        if type(text) is not str:
            raise TypeError(f"{label}: {text!r} is not text")
    if type(tx.created) is not int:
        raise TypeError(f"created: {tx.created!r} is not integer microseconds")
    for p in tx.postings:
        if type(p.account) is not str or type(p.amount) is not int:
            raise TypeError(f"postings: {p!r} needs a text account and an integer amount")
    if crow is not None:
        shape = tuple(map(type, crow))
        if shape not in _OK_SHAPES:
            value: object
            for (name, kind, nullable), value in zip(COLUMN_TYPES, crow, strict=True):
                if value is None and nullable:
                    continue
                if type(value) is not kind:
                    raise TypeError(f"call.{name}: {value!r} is not {kind.__name__}")
            if len(_OK_SHAPES) < _OK_SHAPES_MAX:
                _OK_SHAPES.add(shape)
    if prow is not None:
        for field_name, value in zip(PAYMENT_FIELDS, prow, strict=True):
            if type(value) is not (int if field_name == "amount" else str):
                raise TypeError(f"payment.{field_name}: {value!r} has the wrong type")


def wire_rows(
    tx: Transaction,
) -> tuple[str, tuple[tuple[str, int], ...], CallRow | None, PaymentRow | None]:
    """A transaction's kind, postings, call row and payment row, their types checked.

    What `encode` hashes, without the hashing: the writer sends these to its write process,
    which encodes them there (ledger/planner.py). Raises TypeError for a field whose Python
    type the STRICT tables would refuse, ValueError for a leg of no known party.
    """
    postings = tuple((p.account, p.amount) for p in tx.postings)
    crow = None if tx.call is None else call_row(tx.call)
    prow = None if tx.payment is None else payment_row(tx.payment)
    check_types(tx, crow, prow)
    return tx.kind.value, postings, crow, prow


def priced_by(kind: str, crow: CallRow | None) -> tuple[RateRow, ...]:
    """Deck rows that priced a leg of a call row (none for other kinds), for `used_rates`."""
    if crow is None or kind != "call":
        return ()
    return tuple(
        (crow[plan_i], crow[prefix_i], crow[since_i])
        for plan_i, unrated_i, prefix_i, since_i in RATE_OFFSETS
        if crow[unrated_i] is None
        and crow[plan_i] is not None
        and crow[prefix_i] is not None
        and crow[since_i] is not None
    )


def encode(tx: Transaction) -> Encoded:
    """Rows and content digest of a transaction.

    Raises TypeError for a field of the wrong type, UnicodeEncodeError for unencodable text.
    """
    kind, postings, crow, prow = wire_rows(tx)
    body = canonical(tx.key, kind, tx.currency, tx.reason, postings, crow, prow)
    digest = hashlib.sha256(body).digest()
    return Encoded(tx, kind, postings, crow, prow, digest, digest.hex(), priced_by(kind, crow))


def chain_hash(prev_hash: bytes, seq: int, created: int, digest: bytes) -> bytes:
    """The chain link: SHA-256(prev_hash ‖ seq ‖ created ‖ digest), all raw bytes."""
    return hashlib.sha256(prev_hash + _SEQ_CREATED.pack(seq, created) + digest).digest()


def rating_digest(entry: CallEntry) -> str:
    """A short stable id of one rating of a call (16 hex chars), used in rerate keys."""
    body = _json_text(list(call_row(entry)))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
