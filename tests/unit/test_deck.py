"""SPEC §5 deck CSV and inline destinations: exact reading and operator-facing errors."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.deck import HEADER, DeckError, DeckErrors, destinations_from_rows, parse_deck
from rating.units import parse_time

DECKS = Path(__file__).resolve().parents[2] / "conf" / "decks"
JAN = parse_time("2026-01-01T00:00:00Z")


def deck(*rows: str) -> str:
    return "\n".join((HEADER, *rows)) + "\n"


def test_rates_are_read_as_exact_decimals() -> None:
    (row,) = parse_deck(deck("4420,London,2026-01-01,,0.0123,0.01,30,6"), "d.csv")
    assert row.rate_per_min == Decimal("0.0123")
    assert isinstance(row.rate_per_min, Decimal)
    assert row.connection_fee == Decimal("0.01")
    assert (row.connection_sec, row.billing_block_sec) == (30, 6)
    assert row.valid_since == JAN
    assert row.valid_until is None
    assert row.origin == "d.csv:2"


def test_empty_cells_take_the_documented_defaults() -> None:
    (row,) = parse_deck(deck(",Rest of world,,,0.5,,,"), "d.csv")
    assert row.code == ""
    assert row.valid_since == 0
    assert row.connection_fee == 0
    assert (row.connection_sec, row.billing_block_sec) == (0, 1)


def test_times_accept_rfc3339_bare_date_and_epoch() -> None:
    rows = parse_deck(
        deck(
            "1,a,2026-01-01T00:00:00Z,,0.1,,,",
            "2,b,2026-01-01,,0.1,,,",
            "3,c,1767225600,,0.1,,,",
            "4,d,2026-01-01T04:00:00+04:00,,0.1,,,",
        ),
        "d.csv",
    )
    assert {r.valid_since for r in rows} == {JAN}


def test_columns_may_come_in_any_order() -> None:
    header = (
        "rate_per_min,code,description,valid_since,valid_until,"
        "connection_fee,connection_sec,billing_block_sec"
    )
    (row,) = parse_deck(f"{header}\n0.2,44,UK,2026-01-01,,,60,60\n", "d.csv")
    assert (row.code, row.rate_per_min, row.connection_sec) == ("44", Decimal("0.2"), 60)


def test_quoted_description_with_comma_and_bom() -> None:
    text = "\ufeff" + deck('225,"Cote d\'Ivoire, Abidjan",2026-01-01,,0.24,,,')
    (row,) = parse_deck(text, "d.csv")
    assert row.description == "Cote d'Ivoire, Abidjan"


def test_wrong_header_is_refused_with_the_expected_one() -> None:
    with pytest.raises(DeckError) as err:
        parse_deck("code,desc,rate\n44,UK,0.1\n", "decks/x.csv")
    assert str(err.value).startswith("decks/x.csv:1: header: missing description")
    assert HEADER in str(err.value)


def test_empty_deck_is_refused() -> None:
    with pytest.raises(DeckError, match="the deck is empty"):
        parse_deck("", "decks/x.csv")


def test_negative_rate_error_names_file_line_and_field() -> None:
    with pytest.raises(DeckError) as err:
        parse_deck(
            deck("44,UK,2026-01-01,,0.1,,,", "4420,London,2026-01-01,,-0.1,,,"),
            "decks/retail-a.csv",
        )
    assert str(err.value) == (
        "decks/retail-a.csv:3: rate_per_min: '-0.1' is negative; rates must be >= 0"
    )
    assert (err.value.origin, err.value.line, err.value.field) == (
        "decks/retail-a.csv",
        3,
        "rate_per_min",
    )


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ("+44,UK,2026-01-01,,0.1,,,", "code", "is not numeric"),
        ("44 20,UK,2026-01-01,,0.1,,,", "code", "is not numeric"),
        ("44,UK,2026-01-01,,abc,,,", "rate_per_min", "is not a decimal"),
        ("44,UK,2026-01-01,,,,,", "rate_per_min", "is empty"),
        ("44,UK,2026-01-01,,NaN,,,", "rate_per_min", "is not a decimal"),
        ("44,UK,2026-01-01,,0.1,-0.01,,", "connection_fee", "is negative"),
        ("44,UK,2026-01-01,,0.1,,-5,", "connection_sec", "is negative"),
        ("44,UK,2026-01-01,,0.1,,,1.5", "billing_block_sec", "not a whole number"),
        ("44,UK,yesterday,,0.1,,,", "valid_since", "is not a time"),
        ("44,UK,2026-01-01,2026-01-01,0.1,,,", "valid_until", "is not after valid_since"),
        ("44,UK,2026-02-01,2026-01-01,0.1,,,", "valid_until", "is not after valid_since"),
        ("44,UK,2026-01-01,0.1,,,", "row", "has 7 cells"),
        # Bounds that keep every leg inside the ledger's 64-bit micro-units.
        ("44,UK,2026-01-01,,1e30,,,", "rate_per_min", "'1e30' is above 10000000"),
        ("44,UK,2026-01-01,,10000000.000001,,,", "rate_per_min", "is above 10000000"),
        ("44,UK,2026-01-01,,0.1,1e40,,", "connection_fee", "'1e40' is above 10000000"),
        ("44,UK,2026-01-01,,0.1,,86401,", "connection_sec", "'86401' is longer than 86400 s"),
        ("44,UK,2026-01-01,,0.1,,," + "9" * 5000, "billing_block_sec", "is longer than 86400"),
    ],
)
def test_bad_cells_are_refused_with_line_and_field(row: str, field: str, fragment: str) -> None:
    with pytest.raises(DeckError) as err:
        parse_deck(deck(row), "d.csv")
    assert err.value.line == 2
    assert err.value.field == field
    assert fragment in err.value.message
    assert str(err.value).startswith(f"d.csv:2: {field}: ")


def test_the_largest_prices_and_periods_are_taken() -> None:
    (row,) = parse_deck(deck("44,UK,2026-01-01,,10000000,10000000,86400,0086400"), "x.csv")
    assert (row.rate_per_min, row.connection_fee) == (Decimal(10_000_000), Decimal(10_000_000))
    assert (row.connection_sec, row.billing_block_sec) == (86_400, 86_400)


def test_same_code_and_valid_since_twice_is_an_error_naming_both_lines() -> None:
    with pytest.raises(DeckError) as err:
        parse_deck(
            deck(
                "4420,London,2026-01-01,,0.1,,,",
                "44,UK,2026-01-01,,0.1,,,",
                "4420,London,2026-01-01T00:00:00Z,,0.2,,,",
            ),
            "d.csv",
        )
    assert err.value.line == 4
    assert "repeats line 2" in str(err.value)


def test_same_code_with_later_valid_since_is_fine() -> None:
    rows = parse_deck(
        deck("4420,London,2026-01-01,,0.1,,,", "4420,London,2027-01-01,,0.2,,,"), "d.csv"
    )
    assert len(rows) == 2


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(DeckErrors) as err:
        parse_deck(
            deck("x,a,2026-01-01,,0.1,,,", "44,b,2026-01-01,,-1,,,", "45,c,2026-01-01,,0.1,,,"),
            "d.csv",
        )
    assert [(e.line, e.field) for e in err.value.errors] == [(2, "code"), (3, "rate_per_min")]
    assert isinstance(err.value, DeckError)  # callers catching DeckError see it too
    assert str(err.value).splitlines()[1].startswith("d.csv:3: rate_per_min:")


def test_blank_lines_are_skipped_and_line_numbers_stay_true() -> None:
    with pytest.raises(DeckError) as err:
        parse_deck(deck("44,UK,2026-01-01,,0.1,,,", "", "45,DK,2026-01-01,,-1,,,"), "d.csv")
    assert err.value.line == 4


def test_inline_rows_take_str_int_and_decimal() -> None:
    rows = destinations_from_rows(
        [
            {"code": 44, "description": "UK", "valid_since": "2026-01-01", "rate_per_min": "0.01"},
            {
                "code": "",
                "rate_per_min": Decimal("0.5"),
                "connection_sec": 60,
                "billing_block_sec": 60,
            },
            {"code": "49", "rate_per_min": 1, "valid_since": date(2026, 1, 1)},
            {"code": "33", "rate_per_min": "0.1", "valid_since": datetime(2026, 1, 1, tzinfo=UTC)},
        ],
        "vmgated.yaml",
        lines=[10, 11, 12, 13],
    )
    assert [r.code for r in rows] == ["44", "", "49", "33"]
    assert rows[0].rate_per_min == Decimal("0.01")
    assert rows[2].rate_per_min == Decimal(1)
    assert rows[2].valid_since == JAN == rows[3].valid_since
    assert rows[1].origin == "vmgated.yaml:11"


def test_inline_float_is_refused_with_a_hint_to_quote_it() -> None:
    with pytest.raises(DeckError) as err:
        destinations_from_rows([{"code": "44", "rate_per_min": 0.1}], "vmgated.yaml", lines=[7])
    assert str(err.value).startswith("vmgated.yaml:7: destinations[0].rate_per_min: 0.1 was read")
    assert 'quote it in the YAML (rate_per_min: "0.1")' in str(err.value)


def test_inline_rows_refuse_unknown_and_missing_keys() -> None:
    with pytest.raises(DeckErrors) as err:
        destinations_from_rows([{"code": "44", "rate": "0.1"}, {"rate_per_min": "0.1"}], "c.yaml")
    fields = [e.field for e in err.value.errors]
    assert "destinations[0].rate" in fields
    assert "destinations[1].code" in fields


def test_inline_duplicate_rows_name_both() -> None:
    with pytest.raises(DeckError, match=r"repeats destinations\[0\]"):
        destinations_from_rows(
            [{"code": "44", "rate_per_min": "0.1"}, {"code": "44", "rate_per_min": "0.2"}], "c.yaml"
        )


@pytest.mark.parametrize(
    "name",
    [
        "retail-a",
        "retail-b",
        "wholesale-c",
        "client-std",
        "client-premium",
        "reseller-alpha",
        "reseller-beta",
    ],
)
def test_sample_decks_load(name: str) -> None:
    rows = parse_deck((DECKS / f"{name}.csv").read_text(encoding="utf-8"), f"decks/{name}.csv")
    assert len(rows) > 300
    assert any(r.code == "" for r in rows)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text("0123456789", min_size=1, max_size=8),
            st.decimals(min_value=0, max_value=50, places=6, allow_nan=False, allow_infinity=False),
            st.integers(0, 120),
            st.integers(0, 120),
        ),
        max_size=20,
        unique_by=lambda t: t[0],
    )
)
def test_written_decks_read_back_exactly(rows: list[tuple[str, Decimal, int, int]]) -> None:
    text = deck(*(f"{c},d {c},2026-01-01,,{r},,{cs},{b}" for c, r, cs, b in rows))
    parsed = parse_deck(text, "d.csv")
    assert [(p.code, p.rate_per_min, p.connection_sec, p.billing_block_sec) for p in parsed] == rows


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_garbage_raises_deck_error_or_parses(text: str) -> None:
    try:
        parse_deck(deck(text), "d.csv")
    except DeckError as err:
        assert str(err).startswith("d.csv")
