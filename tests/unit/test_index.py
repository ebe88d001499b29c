"""SPEC §5 matching: normalised digits, longest prefix, the row valid at the call's start."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.deck import HEADER, parse_deck
from rating.index import NEVER_AFTER, NEVER_BEFORE, PrefixIndex
from rating.model import Destination, RatePlan, Scope
from rating.number import normalise
from rating.units import parse_time

T2026 = parse_time("2026-06-01T12:00:00Z")


def index(*rows: str) -> PrefixIndex:
    text = "\n".join((HEADER, *rows)) + "\n"
    return PrefixIndex.build(RatePlan("p", Scope.CUSTOMER, "USD", parse_deck(text, "p.csv")))


def rate_at(idx: PrefixIndex, digits: str, when: str) -> Decimal | None:
    dest = idx.lookup(digits, parse_time(when))
    return None if dest is None else dest.rate_per_min


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "tech", "digits"),
    [
        ("442071234567", "", "442071234567"),
        ("+442071234567", "", "442071234567"),
        ("00442071234567", "", "442071234567"),
        ("+44 20 7123-4567", "", "442071234567"),
        ("+44 (20) 7123.4567", "", "442071234567"),
        ("sip:+442071234567@gw.example.net;user=phone", "", "442071234567"),
        ("SIP:00442071234567@10.0.0.1:5060", "", "442071234567"),
        ("sips:442071234567@gw.example.net", "", "442071234567"),
        ("tel:+44-20-7123-4567;phone-context=+44", "", "442071234567"),
        ("%2B442071234567", "", "442071234567"),
        ("0101#442071234567", "0101#", "442071234567"),
        ("sip:0101#+442071234567@gw", "0101#", "442071234567"),
        ("9900442071234567", "99", "442071234567"),
        ("442071234567", "99", "442071234567"),  # no tech prefix present: left alone
        ("02071234567", "", "02071234567"),  # national format kept: no country guessing
        ("0000", "", ""),  # no country code starts with 0: malformed, not rated as national
        ("000442071234567", "", ""),
        ("+00442071234567", "", "442071234567"),
        ("anonymous", "", ""),
        ("", "", ""),
    ],
)
def test_number_is_normalised_per_trunk(raw: str, tech: str, digits: str) -> None:
    assert normalise(raw, tech) == digits


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=5))
def test_normalised_number_is_always_ascii_digits(raw: str, tech: str) -> None:
    out = normalise(raw, tech)
    assert out == "" or (out.isascii() and out.isdigit())
    assert not out.startswith("00")


# --- longest prefix ------------------------------------------------------------------------


def test_longest_prefix_wins() -> None:
    idx = index(
        "44,UK,2026-01-01,,0.01,,,",
        "4420,London,2026-01-01,,0.02,,,",
        "447,UK Mobile,2026-01-01,,0.03,,,",
    )
    assert rate_at(idx, "442071234567", "2026-06-01") == Decimal("0.02")
    assert rate_at(idx, "447700900123", "2026-06-01") == Decimal("0.03")
    assert rate_at(idx, "441611234567", "2026-06-01") == Decimal("0.01")


def test_no_match_without_catch_all_is_none() -> None:
    idx = index("44,UK,2026-01-01,,0.01,,,")
    assert idx.lookup("33123456789", T2026) is None


def test_empty_code_is_the_catch_all() -> None:
    idx = index(",Rest of world,2026-01-01,,0.5,,,", "44,UK,2026-01-01,,0.01,,,")
    assert rate_at(idx, "33123456789", "2026-06-01") == Decimal("0.5")
    assert rate_at(idx, "441234", "2026-06-01") == Decimal("0.01")


def test_number_shorter_than_a_code_matches_shorter_codes_only() -> None:
    idx = index("44,UK,2026-01-01,,0.01,,,", "442071,London,2026-01-01,,0.02,,,")
    assert rate_at(idx, "4420", "2026-06-01") == Decimal("0.01")
    assert rate_at(idx, "442071", "2026-06-01") == Decimal("0.02")


# --- validity windows ----------------------------------------------------------------------


def test_row_before_its_valid_since_is_not_used() -> None:
    idx = index("44,UK,2026-01-01,,0.01,,,")
    assert idx.lookup("441234", parse_time("2025-12-31T23:59:59.999999Z")) is None
    assert rate_at(idx, "441234", "2026-01-01T00:00:00Z") == Decimal("0.01")


def test_newer_row_supersedes_base_row() -> None:
    idx = index("44,UK,2026-01-01,,0.01,,,", "44,UK,2027-01-01,,0.02,,,")
    assert rate_at(idx, "441234", "2026-12-31T23:59:59Z") == Decimal("0.01")
    assert rate_at(idx, "441234", "2027-01-01T00:00:00Z") == Decimal("0.02")
    assert rate_at(idx, "441234", "2030-01-01") == Decimal("0.02")


def test_future_row_is_used_only_by_calls_after_it() -> None:
    idx = index("4420,London,2027-01-01,,0.02,,,", "44,UK,2026-01-01,,0.01,,,")
    assert rate_at(idx, "442071234567", "2026-06-01") == Decimal("0.01")
    assert rate_at(idx, "442071234567", "2027-06-01") == Decimal("0.02")


def test_promo_window_overrides_base_row_and_ends_exclusively() -> None:
    idx = index(
        "374,Armenia,2026-01-01,,0.10,,,",
        "374,Armenia promo,2026-11-01,2027-01-01,0.07,,,",
    )
    assert rate_at(idx, "37410123456", "2026-10-31T23:59:59Z") == Decimal("0.10")
    assert rate_at(idx, "37410123456", "2026-11-01T00:00:00Z") == Decimal("0.07")
    assert rate_at(idx, "37410123456", "2026-12-31T23:59:59.999999Z") == Decimal("0.07")
    assert rate_at(idx, "37410123456", "2027-01-01T00:00:00Z") == Decimal("0.10")


def test_valid_until_is_exclusive() -> None:
    idx = index("44,UK,2026-01-01,2026-02-01,0.01,,,")
    assert rate_at(idx, "441", "2026-01-31T23:59:59.999999Z") == Decimal("0.01")
    assert rate_at(idx, "441", "2026-02-01T00:00:00Z") is None


def test_expired_longer_code_falls_back_to_shorter_code() -> None:
    idx = index(
        ",World,2026-01-01,,0.9,,,",
        "44,UK,2026-01-01,,0.01,,,",
        "4420,London promo,2026-01-01,2026-03-01,0.005,,,",
    )
    assert rate_at(idx, "442071234567", "2026-02-01") == Decimal("0.005")
    assert rate_at(idx, "442071234567", "2026-04-01") == Decimal("0.01")
    assert rate_at(idx, "331", "2026-04-01") == Decimal("0.9")


def test_fallback_skips_several_levels_down_to_catch_all() -> None:
    idx = index(
        ",World,2026-01-01,,0.9,,,",
        "44,UK,2027-01-01,,0.01,,,",
        "44207,Inner London,2027-01-01,,0.02,,,",
    )
    assert rate_at(idx, "442071234567", "2026-06-01") == Decimal("0.9")


def test_overlapping_rows_latest_valid_since_wins() -> None:
    idx = index(
        "44,base,2026-01-01,,0.10,,,",
        "44,long promo,2026-03-01,2026-09-01,0.08,,,",
        "44,flash promo,2026-05-01,2026-05-08,0.05,,,",
    )
    assert rate_at(idx, "441", "2026-04-01") == Decimal("0.08")
    assert rate_at(idx, "441", "2026-05-03") == Decimal("0.05")
    assert rate_at(idx, "441", "2026-05-08") == Decimal("0.08")
    assert rate_at(idx, "441", "2026-09-01") == Decimal("0.10")


def test_index_is_rebuilt_not_mutated() -> None:
    old = index("44,UK,2026-01-01,,0.01,,,")
    new = index("44,UK,2026-01-01,,0.01,,,", "4420,London,2026-01-01,,0.02,,,")
    assert rate_at(old, "442071", "2026-06-01") == Decimal("0.01")
    assert rate_at(new, "442071", "2026-06-01") == Decimal("0.02")
    assert len(old) == 1 and len(new) == 2


# --- property: the index agrees with a brute-force scan -----------------------------------

codes = st.text("0123", min_size=0, max_size=4)
times = st.integers(min_value=0, max_value=10)
# (code, valid_since, span or None for open-ended), one row per (code, valid_since)
deck_rows = st.lists(
    st.tuples(codes, times, st.one_of(st.none(), st.integers(1, 8))),
    max_size=12,
    unique_by=lambda t: (t[0], t[1]),
)


def destinations(rows: list[tuple[str, int, int | None]]) -> list[Destination]:
    """Deck rows from drawn (code, since, span); each row's rate is its position."""
    return [
        Destination(
            code,
            f"{code}@{since}",
            since,
            None if span is None else since + span,
            Decimal(i),
            Decimal(0),
            0,
            1,
        )
        for i, (code, since, span) in enumerate(rows)
    ]


def brute_force(dests: list[Destination], digits: str, at: int) -> Destination | None:
    """Longest code with a valid row; among that code's valid rows the latest valid_since."""
    for length in range(len(digits), -1, -1):
        valid = [
            d
            for d in dests
            if d.code == digits[:length]
            and d.valid_since <= at
            and (d.valid_until is None or at < d.valid_until)
        ]
        if valid:
            return max(valid, key=lambda d: d.valid_since)
    return None


@settings(max_examples=200, deadline=None)
@given(deck_rows, st.text("0123", max_size=6), times)
def test_lookup_equals_brute_force_scan(
    rows: list[tuple[str, int, int | None]], digits: str, at: int
) -> None:
    dests = destinations(rows)
    idx = PrefixIndex.build(RatePlan("p", Scope.CUSTOMER, "USD", tuple(dests)))
    assert idx.lookup(digits, at) == brute_force(dests, digits, at)


@settings(max_examples=300, deadline=None)
@given(deck_rows, st.text("0123", max_size=6), times)
def test_a_window_holds_its_row_at_every_instant_and_no_further(
    rows: list[tuple[str, int, int | None]], digits: str, at: int
) -> None:
    """`Code.window`: the row of `resolve(at)`, the same row at every time inside the span,
    and another answer just outside each finite end (the span is as wide as it may be)."""
    dests = destinations(rows)
    idx = PrefixIndex.build(RatePlan("p", Scope.CUSTOMER, "USD", tuple(dests)))
    code = idx.longest(digits)
    if code is None:
        return
    row, lo, hi = code.window(at)
    assert lo <= at < hi
    assert row is code.resolve(at)
    dest = None if row is None else row.dest
    for when in range(max(lo, -2), min(hi, 20)):
        assert brute_force(dests, digits, when) == dest, when
    if lo > NEVER_BEFORE:  # a finite end is some row's valid_since or valid_until ...
        assert lo >= 0 and brute_force(dests, digits, lo - 1) != dest  # ... where it changes
    if hi < NEVER_AFTER:
        assert 0 < hi <= 20 and brute_force(dests, digits, hi) != dest
