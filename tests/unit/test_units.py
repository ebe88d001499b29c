"""rating/units.py: exact money and time helpers shared by every box."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.units import (
    MICROS,
    TIME_MAX,
    UnitError,
    ceil_seconds,
    format_micros,
    format_time,
    from_datetime,
    micros_to_decimal,
    parse_amount,
    parse_decimal,
    parse_time,
    to_datetime,
    to_micros,
)


def test_parse_decimal_refuses_nan_and_infinity() -> None:
    for text in ("nan", "inf", "-Infinity", "abc", ""):
        with pytest.raises(UnitError):
            parse_decimal(text)
    assert parse_decimal(" 0.0123 ") == Decimal("0.0123")


def test_to_micros_rounds_half_up_away_from_zero() -> None:
    assert to_micros(Decimal("0.0000005")) == 1
    assert to_micros(Decimal("0.0000004999")) == 0
    assert to_micros(Decimal("-0.0000005")) == -1


def test_parse_amount_refuses_more_than_six_decimals() -> None:
    assert parse_amount("12.5") == 12_500_000
    assert parse_amount("-3") == -3_000_000
    with pytest.raises(UnitError, match="more than 6 decimals"):
        parse_amount("0.0000001")


@pytest.mark.parametrize(
    "text", ["1000000000000", "99999999999999999999999", "1e30", "-1e25", "123456789012345678901.5"]
)
def test_parse_amount_refuses_a_size_no_payment_has(text: str) -> None:
    # These used to escape as decimal.InvalidOperation (quantize past 28 digits) or pass.
    with pytest.raises(UnitError, match="is too large; an amount is below 1000000000000"):
        parse_amount(text)


def test_parse_amount_takes_the_largest_allowed_and_zero_in_any_exponent() -> None:
    assert parse_amount("999999999999.999999") == 10**18 - 1
    assert parse_amount("-999999999999.999999") == -(10**18) + 1
    assert parse_amount("0E+1000") == parse_amount("0E-1000") == 0


@given(st.decimals(allow_nan=True, allow_infinity=True).map(str))
def test_parse_amount_raises_nothing_but_unit_error(text: str) -> None:
    try:
        value = parse_amount(text)
    except UnitError:
        return
    assert abs(value) < 10**18


def test_format_micros_has_exactly_six_decimals() -> None:
    assert format_micros(-1_500_000) == "-1.500000"
    assert format_micros(0) == "0.000000"
    assert format_micros(7) == "0.000007"
    assert format_micros(-7) == "-0.000007"


def test_ceil_seconds_rounds_up_partial_seconds() -> None:
    assert ceil_seconds(0) == 0
    assert ceil_seconds(-5) == 0
    assert ceil_seconds(1) == 1
    assert ceil_seconds(MICROS) == 1
    assert ceil_seconds(MICROS + 1) == 2


def test_parse_time_forms() -> None:
    jan = 1_767_225_600 * MICROS
    assert parse_time("2026-01-01T00:00:00Z") == jan
    assert parse_time("2026-01-01T04:00:00+04:00") == jan
    assert parse_time("2026-01-01T00:00:00") == jan  # no offset: UTC
    assert parse_time("1767225600") == jan
    assert parse_time("1767225600.5") == jan + 500_000
    assert parse_time(1_767_225_600) == jan
    assert parse_time(Decimal("1767225600.000001")) == jan + 1
    with pytest.raises(UnitError):
        parse_time("next tuesday")


@pytest.mark.parametrize(
    "value",
    [10**13, "10000000000000", Decimal("1e13"), Decimal("1e999999999"), Decimal("NaN"), -1,
     "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"],
)
def test_parse_time_refuses_times_no_call_can_have(value: object) -> None:
    # A CDR with such a time used to pass and stop the ledger writer (its chain hash packs
    # the time as a signed 64-bit integer), or raise decimal.Overflow, not UnitError.
    with pytest.raises(UnitError):
        parse_time(value)  # type: ignore[arg-type]


def test_parse_time_takes_both_ends_of_its_range() -> None:
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("9999-12-31T23:59:59.999999Z") == TIME_MAX
    assert format_time(TIME_MAX) == "9999-12-31T23:59:59.999999Z"


def test_format_time_is_rfc3339_utc() -> None:
    assert format_time(None) is None
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1) == "1970-01-01T00:00:00.000001Z"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_round_trip_through_text_and_decimal(micros: int) -> None:
    assert parse_amount(format_micros(micros)) == micros
    assert to_micros(micros_to_decimal(micros)) == micros


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4_000_000_000 * MICROS))
def test_time_round_trips(us: int) -> None:
    assert from_datetime(to_datetime(us)) == us
    text = format_time(us)
    assert text is not None
    assert parse_time(text) == us


def test_from_datetime_is_exact() -> None:
    assert from_datetime(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1_767_225_600 * MICROS + 1
