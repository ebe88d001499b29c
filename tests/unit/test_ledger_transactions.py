"""SPEC §6 transactions: what each builder posts and which transactions `check` refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ledger_fixtures import T0, call

from ledger import codec
from ledger import transactions as txs
from ledger.codec import call_from_row, call_row, encode, rating_digest
from ledger.errors import InvalidTransaction, NotZeroSum
from ledger.model import Posting, Transaction, TxKind


def _postings(tx: Transaction) -> dict[str, int]:
    return {p.account: p.amount for p in tx.postings}


def test_rated_call_posts_customer_minus_c_client_p_reseller_r_tenant_margin() -> None:
    tx = txs.call_tx(call("u1", charge=42_000, payout=30_000, reseller_share=2_000), "USD", T0)
    assert tx.key == "call:u1"
    assert tx.kind is TxKind.CALL
    assert _postings(tx) == {
        "customer:acme": -42_000,
        "client:gw-01": 30_000,
        "reseller:r-alpha": 2_000,
        "tenant": 10_000,
    }
    assert sum(p.amount for p in tx.postings) == 0


def test_direct_call_has_no_reseller_posting() -> None:
    tx = txs.call_tx(call("u2", reseller="direct"), "USD", T0)
    assert _postings(tx) == {"customer:acme": -42_000, "client:gw-01": 30_000, "tenant": 12_000}


def test_unrated_leg_posts_nothing_but_the_call_keeps_its_history() -> None:
    entry = call("u3", charge=42_000, payout=None, reseller_share=2_000)
    tx = txs.call_tx(entry, "USD", T0)
    assert _postings(tx) == {"customer:acme": -42_000, "reseller:r-alpha": 2_000, "tenant": 40_000}
    assert tx.call == entry


def test_call_with_nothing_rated_is_a_zero_posting_history_row() -> None:
    tx = txs.call_tx(call("u4", charge=None, payout=None, reseller_share=None), "USD", T0)
    assert tx.postings == ()
    txs.check(tx)  # valid: history only


def test_unanswered_call_posts_no_zero_amounts() -> None:
    tx = txs.call_tx(call("u5", charge=0, payout=0, reseller_share=0), "USD", T0)
    assert tx.postings == ()


def test_margin_that_disagrees_with_the_legs_is_refused() -> None:
    entry = call("u6")
    bad = type(entry)(**{**{f: getattr(entry, f) for f in entry.__slots__}, "margin": 1})
    with pytest.raises(InvalidTransaction, match="margin"):
        txs.call_tx(bad, "USD", T0)


def test_rated_customer_leg_without_customer_is_refused() -> None:
    with pytest.raises(InvalidTransaction, match="customer"):
        txs.call_tx(call("u7", customer=""), "USD", T0)


def test_payment_in_credits_the_customer_from_external() -> None:
    tx = txs.payment_in("acme", 5_000_000, "bank-1", T0, "USD")
    assert tx.key == "pay:bank-1"
    assert _postings(tx) == {"customer:acme": 5_000_000, "external": -5_000_000}
    assert tx.payment is not None and tx.payment.direction == "IN"


@pytest.mark.parametrize(
    ("build", "acc", "target_type"),
    [
        (txs.client_payout, "client:gw-01", "VMGateClient"),
        (txs.reseller_payout, "reseller:gw-01", "Reseller"),
    ],
)
def test_payouts_debit_the_payee_to_external(build, acc, target_type) -> None:  # type: ignore[no-untyped-def]
    tx = build("gw-01", 700, "wire-9", T0, "USD")
    assert _postings(tx) == {acc: -700, "external": 700}
    assert tx.payment.direction == "OUT" and tx.payment.target_type == target_type


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_payment_is_refused(amount: int) -> None:
    with pytest.raises(InvalidTransaction, match="positive"):
        txs.payment_in("acme", amount, "r", T0, "USD")


@pytest.mark.parametrize("ref", ["", "   "])
def test_payment_without_reference_is_refused(ref: str) -> None:
    with pytest.raises(InvalidTransaction, match="reference"):
        txs.client_payout("gw-01", 1, ref, T0, "USD")


def test_adjustment_needs_a_reason_and_zero_sum() -> None:
    ok = txs.adjustment(
        [Posting("customer:acme", 5), Posting("tenant", -5)], "refund", "adj:1", T0, "USD"
    )
    assert ok.kind is TxKind.ADJUSTMENT
    with pytest.raises(InvalidTransaction, match="reason"):
        txs.adjustment(
            [Posting("customer:acme", 5), Posting("tenant", -5)], " ", "adj:2", T0, "USD"
        )
    with pytest.raises(NotZeroSum):
        txs.adjustment(
            [Posting("customer:acme", 5), Posting("tenant", -4)], "x", "adj:3", T0, "USD"
        )
    with pytest.raises(InvalidTransaction, match="reserved"):
        txs.adjustment(
            [Posting("customer:acme", 5), Posting("tenant", -5)], "x", "pay:1", T0, "USD"
        )


@pytest.mark.parametrize(
    "name", ["bank", "customer", "customer:", "tenant:x", "external:y", "Customer:acme"]
)
def test_bad_account_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidTransaction, match="account"):
        txs.check_account(name)


def test_zero_amount_posting_is_refused() -> None:
    tx = Transaction("adj:z", TxKind.ADJUSTMENT, "USD", (Posting("tenant", 0),), T0, "why")
    with pytest.raises(InvalidTransaction, match="non-zero"):
        txs.check(tx)


def test_hand_made_payment_with_wrong_postings_is_refused() -> None:
    good = txs.payment_in("acme", 10, "r1", T0, "USD")
    bad = Transaction(
        good.key,
        good.kind,
        "USD",
        (Posting("customer:acme", 10), Posting("tenant", -10)),
        T0,
        payment=good.payment,
    )
    with pytest.raises(InvalidTransaction):
        txs.check(bad)


def test_rerate_is_exact_reversal_plus_new_call_with_deterministic_keys() -> None:
    old = call("u8", charge=None)
    new = call("u8", charge=50_000)
    rev, again = txs.rerate(old, new, "USD", T0)
    d = rating_digest(old)
    assert rev.key == f"call:u8:reversal:{d}" and rev.kind is TxKind.REVERSAL
    assert again.key == f"call:u8:rerate:{d}" and again.call == new
    old_postings = txs.call_postings(old)
    assert rev.postings == tuple(Posting(p.account, -p.amount) for p in old_postings)
    assert txs.rerate(old, new, "USD", T0 + 5)[0].key == rev.key  # repeatable
    txs.check(rev)
    txs.check(again)


def test_rerate_of_two_different_calls_is_refused() -> None:
    with pytest.raises(InvalidTransaction, match="call_uid"):
        txs.rerate(call("a"), call("b"), "USD", T0)


def test_call_row_round_trips_exactly() -> None:
    for entry in (
        call("r1", flags=("negative_margin",)),
        call("r2", reseller="direct"),
        call("r3", charge=None, payout=None, reseller_share=None),
    ):
        assert call_from_row(call_row(entry)) == entry


def test_created_is_not_part_of_the_content_digest() -> None:
    a = encode(txs.payment_in("acme", 10, "r", T0, "USD"))
    b = encode(txs.payment_in("acme", 10, "r", T0 + 60_000_000, "USD"))
    c = encode(txs.payment_in("acme", 11, "r", T0, "USD"))
    assert a.digest == b.digest != c.digest


amounts = st.integers(min_value=0, max_value=10**12)


@settings(max_examples=200, deadline=None)
@given(
    charge=st.none() | amounts,
    payout=st.none() | amounts,
    share=st.none() | amounts,
    direct=st.booleans(),
)
def test_every_call_transaction_sums_to_zero(
    charge: int | None, payout: int | None, share: int | None, direct: bool
) -> None:
    entry = call(
        "h",
        charge=charge,
        payout=payout,
        reseller_share=share,
        reseller="direct" if direct else "r-alpha",
    )
    tx = txs.call_tx(entry, "USD", T0)
    txs.check(tx)
    assert sum(p.amount for p in tx.postings) == 0
    assert all(p.amount != 0 for p in tx.postings)
    rev, again = txs.rerate(entry, call("h", charge=1, payout=1, reseller_share=None), "USD", T0)
    assert sum(p.amount for p in rev.postings) == 0 == sum(p.amount for p in again.postings)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.integers(min_value=-(10**15), max_value=10**15).filter(bool), min_size=1, max_size=6
    )
)
def test_check_accepts_exactly_the_zero_sum_sets(values: list[int]) -> None:
    postings = tuple(Posting(f"customer:c{i}", v) for i, v in enumerate(values))
    tx = Transaction("adj:h", TxKind.ADJUSTMENT, "USD", postings, T0, "test")
    if sum(values) == 0:
        txs.check(tx)
    else:
        with pytest.raises(NotZeroSum):
            txs.check(tx)


def test_check_refuses_a_created_time_the_chain_cannot_hold() -> None:
    # The chain hash packs `created` as a signed 64-bit integer: past 9999 the writer would
    # have died planning the group; `check` refuses the one transaction instead.
    good = txs.payment_in("acme", 1_000_000, "BANK-1", T0, "USD")
    txs.check(good)
    for created in (-1, 10**19):
        bad = Transaction(key=good.key, kind=good.kind, currency=good.currency,
                          postings=good.postings, created=created, payment=good.payment)
        with pytest.raises(InvalidTransaction, match="created"):
            txs.check(bad)


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=30),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_json_leaf, st.lists(_json_leaf, max_size=4),
                          st.tuples(_json_leaf, _json_leaf)), max_size=60))  # fmt: skip
def test_canonical_json_is_the_standard_encoders_text(doc: list[object]) -> None:
    # The digest of every stored transaction depends on these bytes: the encoder built once
    # must write exactly what `json.JSONEncoder.encode` with the same options writes.
    assert codec._json_text(doc) == codec._JSON.encode(doc)
    assert codec._C_JSON is not None  # CPython: the fast path is the one tested
