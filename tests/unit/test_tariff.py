"""SPEC §5 tariff arithmetic: charged seconds, amounts, rounding once per leg."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.tariff import Tariff, amount_micros, charged_seconds

rates = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)
fees = st.decimals(min_value=0, max_value=10, places=4, allow_nan=False, allow_infinity=False)
conn_secs = st.integers(min_value=0, max_value=120)
blocks = st.integers(min_value=0, max_value=120)
billsecs = st.integers(min_value=0, max_value=20_000)


def reference_charged(billsec: int, connection_sec: int, block: int) -> int:
    """Brute force, second by second: grow the charge until it covers the call."""
    if billsec == 0:
        return 0
    charged = connection_sec if connection_sec > 0 else (block if block > 0 else 1)
    step = block if block > 0 else 1
    while charged < billsec:
        charged += step
    return charged


def reference_amount(rate: Decimal, fee: Decimal, billsec: int, conn: int, block: int) -> int:
    """Second by second with exact fractions, one half-up rounding at the very end."""
    charged = reference_charged(billsec, conn, block)
    if charged == 0:
        return 0
    total = Fraction(fee)
    per_second = Fraction(rate) / 60
    for _ in range(charged):
        total += per_second
    micros = total * 1_000_000
    # half-up on a non-negative fraction: floor(x + 1/2)
    return (2 * micros.numerator + micros.denominator) // (2 * micros.denominator)


def test_ring_time_is_never_billed() -> None:
    assert charged_seconds(0, 60, 60) == 0
    assert amount_micros(Decimal("0.5"), Decimal("0.1"), 0, answered=False) == 0


def test_connection_fee_only_on_answered_calls() -> None:
    assert amount_micros(Decimal(0), Decimal("0.25"), 0, answered=False) == 0
    assert Tariff.of(Decimal(0), Decimal("0.25"), 0, 1).price(0) == (0, 0)
    assert Tariff.of(Decimal(0), Decimal("0.25"), 0, 1).price(1) == (1, 250_000)


def test_short_call_is_charged_the_connection_period() -> None:
    assert charged_seconds(1, 30, 6) == 30
    assert charged_seconds(30, 30, 6) == 30


def test_after_connection_period_whole_blocks_are_charged() -> None:
    assert charged_seconds(31, 30, 6) == 36
    assert charged_seconds(61, 30, 6) == 66


def test_zero_connection_sec_makes_the_first_block_the_block() -> None:
    assert charged_seconds(1, 0, 60) == 60
    assert charged_seconds(61, 0, 60) == 120


def test_zero_block_means_per_second_after_connection() -> None:
    assert charged_seconds(61, 30, 0) == 61
    assert charged_seconds(10, 30, 0) == 30
    assert charged_seconds(7, 0, 0) == 7


# Worked examples: (rate/min, fee, conn, block, billsec) -> (charged, micro-units).
GOLDEN = [
    # 0.0123 × 66 / 60 = 0.01353 → 0.013530
    ("0.0123", "0", 30, 6, 61, 66, 13_530),
    # 60/60, 61 s → 120 s; 0.0065 × 120 / 60 = 0.013 → 0.013000
    ("0.0065", "0", 60, 60, 61, 120, 13_000),
    # 1/1, 61 s → 61 s; 0.01 × 61 / 60 = 0.010166666… → 0.010167 (half-up of …66…)
    ("0.01", "0", 1, 1, 61, 61, 10_167),
    # 0/1, 7 s; 0.0001 × 7 / 60 = 0.0000116666… → 0.000012
    ("0.0001", "0", 0, 1, 7, 7, 12),
    # fee 0.01 + 0.09 × 6 / 60 = 0.01 + 0.009 = 0.019
    ("0.09", "0.01", 6, 6, 1, 6, 19_000),
    # exactly half a micro: 0.00003 × 1 / 60 = 0.0000005 → half-up → 0.000001
    ("0.00003", "0", 1, 1, 1, 1, 1),
    # just below half: 0.000029 / 60 = 0.000000483… → 0.000000
    ("0.000029", "0", 1, 1, 1, 1, 0),
    # 3 h at 1/1: 0.0123 × 10800 / 60 = 2.214 → 2.214000
    ("0.0123", "0", 1, 1, 10_800, 10_800, 2_214_000),
    # 6/6 with 0.0037: 61 s → 66 s; 0.0037 × 66 / 60 = 0.00407 → 0.004070
    ("0.0037", "0", 6, 6, 61, 66, 4_070),
    # Rounding once per leg, not per 6 s block: 11 blocks of 0.0123×6/60 = 0.00123 each are
    # exact, but at 0.0125/min a block is 0.00125 → per-block rounding would still be exact;
    # at 0.01237/min a block is 0.001237 and 0.0012370 × 11 = 0.013607 (single rounding).
    ("0.01237", "0", 6, 6, 61, 66, 13_607),
    # 0.00001/min for 61 s per block rounding would give 0 per block; once per leg:
    # 0.00001 × 61 / 60 = 0.0000101666… → 0.000010
    ("0.00001", "0", 1, 1, 61, 61, 10),
]


@pytest.mark.parametrize(("rate", "fee", "conn", "block", "billsec", "charged", "micros"), GOLDEN)
def test_golden_worked_examples(
    rate: str, fee: str, conn: int, block: int, billsec: int, charged: int, micros: int
) -> None:
    assert charged_seconds(billsec, conn, block) == charged
    assert amount_micros(Decimal(rate), Decimal(fee), charged, answered=True) == micros
    assert Tariff.of(Decimal(rate), Decimal(fee), conn, block).price(billsec) == (charged, micros)


def test_rounding_happens_once_per_leg_not_per_block() -> None:
    # 0.00005/min over 6 s blocks: each block is 0.000005, which would round to 0.000005;
    # over 1 s blocks each second is 0.000000833…, rounding per second would give 1 µ each
    # (60 µ for a minute) where the true amount is 50 µ.
    tariff = Tariff.of(Decimal("0.00005"), Decimal(0), 1, 1)
    assert tariff.price(60) == (60, 50)


def test_negative_rate_is_refused_by_the_integer_form() -> None:
    with pytest.raises(ValueError):
        Tariff.of(Decimal("-0.1"), Decimal(0), 0, 1)


@settings(max_examples=300, deadline=None)
@given(billsecs, conn_secs, blocks)
def test_charged_is_never_less_than_billsec(billsec: int, conn: int, block: int) -> None:
    assert charged_seconds(billsec, conn, block) >= billsec


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=20_000), conn_secs, st.integers(1, 120))
def test_charge_beyond_connection_is_whole_blocks(billsec: int, conn: int, block: int) -> None:
    charged = charged_seconds(billsec, conn, block)
    if charged > conn:
        assert (charged - conn) % block == 0
        assert charged - block < billsec  # the smallest such charge, not one block more
    else:
        assert charged == conn


@settings(max_examples=300, deadline=None)
@given(billsecs, conn_secs, blocks)
def test_charged_equals_second_by_second_reference(billsec: int, conn: int, block: int) -> None:
    assert charged_seconds(billsec, conn, block) == reference_charged(billsec, conn, block)


@settings(max_examples=200, deadline=None)
@given(rates, fees, conn_secs, blocks, st.integers(0, 5_000), st.integers(0, 5_000))
def test_amount_is_monotone_in_duration(
    rate: Decimal, fee: Decimal, conn: int, block: int, a: int, b: int
) -> None:
    short, long_ = sorted((a, b))
    tariff = Tariff.of(rate, fee, conn, block)
    assert tariff.price(short)[1] <= tariff.price(long_)[1]


@settings(max_examples=200, deadline=None)
@given(rates, fees, conn_secs, blocks, st.integers(0, 4_000))
def test_amount_equals_exact_second_by_second_reference(
    rate: Decimal, fee: Decimal, conn: int, block: int, billsec: int
) -> None:
    charged, micros = Tariff.of(rate, fee, conn, block).price(billsec)
    assert micros == reference_amount(rate, fee, billsec, conn, block)
    assert micros == amount_micros(rate, fee, charged, answered=billsec > 0)


@settings(max_examples=400, deadline=None)
@given(
    st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=10**3, places=9, allow_nan=False, allow_infinity=False),
    st.integers(1, 10**7),
)
def test_integer_fast_path_equals_decimal_formula(
    rate: Decimal, fee: Decimal, charged: int
) -> None:
    tariff = Tariff.of(rate, fee, 0, 1)
    exact = (Fraction(fee) + Fraction(rate) * charged / 60) * 1_000_000
    by_fraction = (2 * exact.numerator + exact.denominator) // (2 * exact.denominator)
    assert tariff.amount(charged) == amount_micros(rate, fee, charged, answered=True)
    assert tariff.amount(charged) == by_fraction
