"""One group of transactions planned against the file's head: seqs, chain hashes, rows, outcomes.

Pure (no I/O): the write process (ledger/sink.py) calls `plan_group` inside its BEGIN
IMMEDIATE, with the head it just read and the group's keys the file already holds, and writes
the rows it returns. The content digests are computed here, on the write process's core, not
on the daemon's event loop (about 12 µs of a call transaction's ~50 on the loop went to the
canonical JSON, SHA-256 and the rows; bench/e2e.py).

A transaction travels as a `Wire` tuple, built by the daemon (`ledger.writer.prepare`) from a
checked transaction; a group as a list of units, each a list of Wires (a unit of several is
linked: all of it is written or none).

Exactly once, as before the move: a key the file holds, or that an earlier transaction of the
same group took, resolves to that transaction (`EXISTED`) when the content digest is the same
and to `CONFLICT` otherwise. `new_since`: after the write process died with this group in
flight, the daemon sends the group again with the head it last heard of; a key the file holds
at a seq after it was written by this very group before the death, so its first occurrence
is reported `NEW`, as the lost answer would have said.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ledger.codec import CallRow, PaymentRow, RateRow, canonical, chain_hash, priced_by

Wire = tuple[
    str,  # key
    str,  # kind (TxKind value)
    str,  # currency
    int,  # created (µs)
    str,  # reason
    tuple[tuple[str, int], ...],  # postings: (account, amount)
    "CallRow | None",
    "PaymentRow | None",
]
Known = tuple[int, str, str]  # seq, digest hex, hash hex of a key the file holds

# Outcome codes of `Result` = (code, seq, text).
NEW = 0  # written at `seq`; text = its chain hash (hex)
EXISTED = 1  # the key already names the same content at `seq`; text = its hash
CONFLICT = 2  # the key names other content at `seq`; text = ""
INVALID = 3  # the content cannot be encoded; text = why (seq 0)
Result = tuple[int, int, str]
Written = tuple[int, str, list[Result], list[RateRow]]
"""The write process's answer for a group: head seq and hash after it, an outcome per
transaction in the order sent, the deck rows it recorded as used."""


@dataclass(slots=True)
class Plan:
    """The rows of one group and an outcome per transaction, in the order they were sent."""

    seq: int  # the head after the group
    prev: bytes  # its hash
    prev_hex: str
    results: list[Result] = field(default_factory=list)
    tx_rows: list[tuple[Any, ...]] = field(default_factory=list)
    posting_rows: list[tuple[Any, ...]] = field(default_factory=list)
    call_rows: list[tuple[Any, ...]] = field(default_factory=list)
    payment_rows: list[tuple[Any, ...]] = field(default_factory=list)
    rate_rows: list[tuple[Any, ...]] = field(default_factory=list)
    new_rates: list[RateRow] = field(default_factory=list)
    _rates_seen: set[RateRow] = field(default_factory=set)


def _digest(wire: Wire) -> bytes | str:
    """The content digest, or why the content cannot be encoded."""
    key, kind, currency, _, reason, postings, crow, prow = wire
    try:
        return hashlib.sha256(canonical(key, kind, currency, reason, postings, crow, prow)).digest()
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        return f"transaction {key!r}: {exc}"


def plan_group(
    units: list[list[Wire]],
    base_seq: int,
    base_hash: bytes,
    known: dict[str, Known],
    used_rates: set[RateRow],
    new_since: int | None = None,
) -> Plan:
    """Assign seqs and hashes after (`base_seq`, `base_hash`) and build the group's rows.

    `known`: the group's keys the file holds; `used_rates`: deck rows already recorded (not
    changed here: the caller adds `Plan.new_rates` once the group is committed).
    """
    plan = Plan(base_seq, base_hash, base_hash.hex())
    fresh: dict[str, Known] = {}  # keys this group writes
    reported: set[str] = set()  # keys already answered NEW in this group
    results = plan.results
    for unit in units:
        digests = [_digest(wire) for wire in unit]
        bad = next((d for d in digests if isinstance(d, str)), None)
        if bad is not None:
            # A linked unit is written whole or not at all: every member hears why.
            results.extend((INVALID, 0, bad) for _ in unit)
            continue
        # Resolve every key first, so that a conflict writes none of a linked unit.
        inside: dict[str, tuple[bytes, int]] = {}  # new keys of the unit: digest, seq
        hits: list[Known | None] = []
        conflict: int | None = None
        for wire, digest in zip(unit, digests, strict=True):
            assert isinstance(digest, bytes)
            key = wire[0]
            hit = fresh.get(key) or known.get(key)
            if hit is None and key in inside:
                if inside[key][0] != digest:
                    conflict = inside[key][1]
                    break
            elif hit is not None and hit[1] != digest.hex():
                conflict = hit[0]
                break
            elif hit is None:
                inside[key] = (digest, plan.seq + len(inside) + 1)
            hits.append(hit)
        if conflict is not None:
            results.extend((CONFLICT, conflict, "") for _ in unit)
            continue
        for wire, digest, hit in zip(unit, digests, hits, strict=True):
            assert isinstance(digest, bytes)
            key = wire[0]
            if hit is None and key not in fresh:
                digest_hex = digest.hex()
                _emit(plan, wire, digest, digest_hex, used_rates)
                fresh[key] = (plan.seq, digest_hex, plan.prev_hex)
                reported.add(key)  # a later occurrence in this group is a duplicate of it
                results.append((NEW, plan.seq, plan.prev_hex))
                continue
            seq, _, hash_hex = hit if hit is not None else fresh[key]
            if new_since is not None and seq > new_since and key not in reported:
                reported.add(key)
                results.append((NEW, seq, hash_hex))
            else:
                results.append((EXISTED, seq, hash_hex))
    return plan


def _emit(
    plan: Plan, wire: Wire, digest: bytes, digest_hex: str, used_rates: set[RateRow]
) -> None:
    """Append one new transaction to the plan: next seq, chain link, rows."""
    key, kind, currency, created, reason, postings, crow, prow = wire
    seq = plan.seq + 1
    link = chain_hash(plan.prev, seq, created, digest)
    link_hex = link.hex()
    plan.tx_rows.append(
        (seq, key, kind, currency, created, reason, digest_hex, plan.prev_hex, link_hex)
    )
    posting_rows = plan.posting_rows
    for idx, (acc, amount) in enumerate(postings):
        posting_rows.append((seq, idx, acc, amount))
    if crow is not None:
        plan.call_rows.append((seq, *crow))
        for rate in priced_by(kind, crow):
            if rate not in used_rates and rate not in plan._rates_seen:
                plan._rates_seen.add(rate)
                plan.new_rates.append(rate)
                plan.rate_rows.append((*rate, seq))
    if prow is not None:
        plan.payment_rows.append((seq, *prow))
    plan.seq, plan.prev, plan.prev_hex = seq, link, link_hex
