"""The write process's planner (ledger/planner.py): a group of checked transactions becomes
seqs, chain links, rows and one outcome each, exactly once per key, linked units whole."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_ledger_fixtures import T0, call
from test_ledger_store import pay

from ledger import planner, sink
from ledger import transactions as txs
from ledger.codec import GENESIS_HASH, chain_hash, encode
from ledger.planner import CONFLICT, EXISTED, INVALID, NEW, Wire, plan_group
from ledger.sinkclient import FRAME, dump_frame
from ledger.writer import prepare

ZERO = bytes(32)


def wire(ref: str, amount: int = 1_000) -> Wire:
    return prepare(pay(ref, amount))


def test_new_transactions_get_consecutive_seqs_and_the_chain_of_their_digests() -> None:
    txs_in = [pay("a"), txs.call_tx(call("u1"), "USD", T0 + 1), pay("b", 7)]
    plan = plan_group([[prepare(tx)] for tx in txs_in], 4, b"\x01" * 32, {}, set())
    prev = b"\x01" * 32
    for seq, tx in enumerate(txs_in, start=5):
        prev = chain_hash(prev, seq, tx.created, encode(tx).digest)
    assert [r[:2] for r in plan.results] == [(NEW, 5), (NEW, 6), (NEW, 7)]
    assert (plan.seq, plan.prev) == (7, prev)
    assert plan.results[-1][2] == prev.hex()
    assert [row[0] for row in plan.tx_rows] == [5, 6, 7]
    assert [row[6] for row in plan.tx_rows] == [encode(tx).digest_hex for tx in txs_in]
    assert [row[:2] for row in plan.call_rows] == [(6, "u1")]
    assert [row[0] for row in plan.payment_rows] == [5, 7]
    # The call's three priced legs are recorded as used rate rows, once, at its seq.
    assert len(plan.rate_rows) == 3 and {row[3] for row in plan.rate_rows} == {6}


def test_a_rate_row_already_used_is_not_recorded_again() -> None:
    first = plan_group([[prepare(txs.call_tx(call("u1"), "USD", T0))]], 0, ZERO, {}, set())
    used = set(first.new_rates)
    again = plan_group([[prepare(txs.call_tx(call("u2"), "USD", T0))]], 1, first.prev, {}, used)
    assert len(used) == 3 and again.rate_rows == [] and again.new_rates == []


def test_a_key_repeated_in_the_group_or_in_the_file_resolves_to_the_first() -> None:
    on_disk = plan_group([[wire("old")]], 0, ZERO, {}, set())
    (_, _, old_hash) = on_disk.results[0]
    known = {"pay:old": (1, on_disk.tx_rows[0][6], old_hash)}
    units = [[wire("n")], [wire("old")], [wire("n")], [wire("n", 5)], [wire("old", 5)]]
    plan = plan_group(units, 1, on_disk.prev, known, set())
    n_hash = plan.results[0][2]
    assert plan.results == [
        (NEW, 2, n_hash),
        (EXISTED, 1, old_hash),
        (EXISTED, 2, n_hash),
        (CONFLICT, 2, ""),
        (CONFLICT, 1, ""),
    ]
    assert len(plan.tx_rows) == 1


def test_a_linked_unit_with_a_conflict_writes_none_of_its_members() -> None:
    plan = plan_group([[wire("a")], [wire("b"), wire("a", 9)], [wire("c")]], 0, ZERO, {}, set())
    assert [r[:2] for r in plan.results] == [(NEW, 1), (CONFLICT, 1), (CONFLICT, 1), (NEW, 2)]
    assert [row[1] for row in plan.tx_rows] == ["pay:a", "pay:c"]


def test_a_linked_unit_may_repeat_a_key_with_the_same_content() -> None:
    plan = plan_group([[wire("a"), wire("a")]], 0, ZERO, {}, set())
    assert [r[:2] for r in plan.results] == [(NEW, 1), (EXISTED, 1)]
    clash = plan_group([[wire("a"), wire("a", 2)]], 0, ZERO, {}, set())
    assert [r[:2] for r in clash.results] == [(CONFLICT, 1), (CONFLICT, 1)]
    assert clash.tx_rows == []


def test_unencodable_text_fails_its_transaction_and_its_unit_only() -> None:
    bad = prepare(txs.payment_in("acme", 5, "ref-\ud800", T0, "USD"))
    plan = plan_group([[wire("a")], [bad], [wire("b"), bad], [wire("c")]], 0, ZERO, {}, set())
    codes = [r[0] for r in plan.results]
    assert codes == [NEW, INVALID, INVALID, INVALID, NEW]
    assert "surrogate" in plan.results[1][2] and "ref-" in plan.results[1][2]
    assert [row[1] for row in plan.tx_rows] == ["pay:a", "pay:c"]
    assert [row[0] for row in plan.tx_rows] == [1, 2]


def test_after_a_death_the_keys_the_lost_group_wrote_are_answered_as_new() -> None:
    """`new_since`: the file holds the group's keys past the head the daemon last heard of."""
    first = plan_group([[wire("before")], [wire("a")], [wire("b")]], 0, ZERO, {}, set())
    known = {row[1]: (row[0], row[6], row[8]) for row in first.tx_rows}
    units = [[wire("before")], [wire("a")], [wire("a")], [wire("b")], [wire("c")]]
    again = plan_group(units, 3, first.prev, known, set(), new_since=1)
    assert [r[:2] for r in again.results] == [
        (EXISTED, 1),  # in the file before the lost group
        (NEW, 2),  # written by the lost group: its answer was lost
        (EXISTED, 2),  # a repeat inside the group, as the first answer said
        (NEW, 3),
        (NEW, 4),  # not written before the death: written now
    ]
    assert [row[1] for row in again.tx_rows] == ["pay:c"]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3)), max_size=30))
def test_each_key_is_written_once_and_every_repeat_answered_as_the_model_says(
    ops: list[tuple[int, int]],
) -> None:
    plan = plan_group([[wire(f"k{k}", amount)] for k, amount in ops], 0, ZERO, {}, set())
    first: dict[int, tuple[int, int]] = {}  # key -> (amount, seq)
    expected = []
    for k, amount in ops:
        if k not in first:
            first[k] = (amount, len(first) + 1)
            expected.append((NEW, first[k][1]))
        elif first[k][0] == amount:
            expected.append((EXISTED, first[k][1]))
        else:
            expected.append((CONFLICT, first[k][1]))
    assert [r[:2] for r in plan.results] == expected
    assert [row[0] for row in plan.tx_rows] == list(range(1, len(first) + 1))


def _frames(path: Path, *requests: tuple[object, ...]) -> Path:
    path.write_bytes(b"".join(dump_frame(r) for r in requests))
    return path


def _replies(data: bytes) -> list[tuple[object, ...]]:
    import pickle

    out, pos = [], 0
    while pos < len(data):
        (size,) = FRAME.unpack_from(data, pos)
        out.append(pickle.loads(data[pos + FRAME.size : pos + FRAME.size + size]))
        pos += FRAME.size + size
    return out


def test_a_bug_in_the_planner_fails_that_request_and_the_process_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "l.db")
    real = planner.plan_group
    calls = []

    def buggy(*args: object, **kwargs: object) -> planner.Plan:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("planning bug")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sink, "plan_group", buggy)
    group = ("group", 0, GENESIS_HASH, [[wire("a")]], None)
    requests = _frames(tmp_path / "requests", group, group, ("head",))
    with open(requests, "rb") as rfile, open(tmp_path / "replies", "wb") as wfile:
        status = sink.serve(path, os.getpid(), 1000, rfile, wfile)
    ready, failed, written, head = _replies((tmp_path / "replies").read_bytes())
    assert status == 0 and ready == ("ok", None)
    assert failed[:2] == ("err", "RuntimeError") and "planning bug" in str(failed[2])
    assert written[0] == "ok" and written[1][2] == [(NEW, 1, written[1][1])]
    assert head == ("ok", (1, written[1][1]))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT key FROM transactions").fetchall() == [("pay:a",)]
