"""Exact money and time units shared by every box.

Money is integer micro-units (10⁻⁶ of the currency) from the moment a CSV cell is read until
it is formatted for a person or a scrape; `Decimal` is used only at the edges. Instants are
integer microseconds since the Unix epoch, UTC (`EpochUs`), which is what a HEP timestamp
carries (seconds + microseconds) and what makes `billsec` exact without floats.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS = 1_000_000
EpochUs = int
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Q6 = Decimal("0.000001")


class UnitError(ValueError):
    """A money amount or a time that cannot be read exactly."""


def parse_decimal(text: str) -> Decimal:
    """Read a decimal number exactly; refuse floats' spellings we cannot trust (nan, inf)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise UnitError(f"{text!r} is not a decimal number") from exc
    if not value.is_finite():
        raise UnitError(f"{text!r} is not a finite decimal number")
    return value


def to_micros(value: Decimal) -> int:
    """Round a Decimal amount half-up to 6 decimals and return integer micro-units."""
    return int((value * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


AMOUNT_LIMIT = 10**12
"""Amounts typed by a person are below this many currency units in size (10¹⁸ micro-units,
inside the ledger's signed 64-bit integers with room for sums): a larger one is a typo."""


def parse_amount(text: str) -> int:
    """Read an amount typed by a person ('12.5', '-3') into micro-units.

    Refuses more than 6 decimals and a size of `AMOUNT_LIMIT` or more (UnitError, naming both).
    """
    value = parse_decimal(text)
    if value and value.adjusted() >= 12:  # checked first: quantize would overflow the context
        raise UnitError(f"{text!r} is too large; an amount is below 1000000000000 in size")
    if value != value.quantize(_Q6, rounding=ROUND_HALF_UP):
        raise UnitError(f"{text!r} has more than 6 decimals")
    return to_micros(value)


def format_micros(micros: int) -> str:
    """Format micro-units as a string with exactly 6 decimals ('-1.500000')."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


def micros_to_decimal(micros: int) -> Decimal:
    """Micro-units as an exact Decimal in major units (for metrics and JSON)."""
    return Decimal(micros).scaleb(-6)


def ceil_seconds(duration_us: int) -> int:
    """Whole seconds, rounded up, of a non-negative duration in microseconds."""
    if duration_us <= 0:
        return 0
    return -(-duration_us // MICROS)


_NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")


TIME_MAX: EpochUs = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999Z, the last instant RFC 3339 can write (and well inside the
ledger's signed 64-bit integers). Times before 1970 or after it are refused when read."""


def parse_time(value: str | int | Decimal) -> EpochUs:
    """Read RFC 3339 (UTC or with offset) or epoch seconds with a fraction into EpochUs.

    Raises UnitError for anything else, including a time outside 1970-01-01 … 9999-12-31
    (an epoch number like 1e13 or 1e999999999 is a typo or garbage, never a call time).
    """
    us = _parse_time(value)
    if not 0 <= us <= TIME_MAX:
        raise UnitError(f"{value!r} is outside 1970-01-01T00:00:00Z … 9999-12-31T23:59:59Z")
    return us


def _parse_time(value: str | int | Decimal) -> EpochUs:
    if isinstance(value, int):
        return value * MICROS
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 30:
            raise UnitError(f"{value!r} is not a time in epoch seconds")
        return int((value * MICROS).to_integral_value(rounding=ROUND_HALF_UP))
    text = value.strip()
    if _NUMERIC.match(text):
        return _parse_time(Decimal(text))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise UnitError(f"{value!r} is neither RFC 3339 nor epoch seconds") from exc
    if dt.tzinfo is None:
        # Rate times are UTC by contract (seeds: "all rate times are UTC").
        dt = dt.replace(tzinfo=UTC)
    return from_datetime(dt)


def from_datetime(dt: datetime) -> EpochUs:
    """An aware datetime as EpochUs (exact, integer arithmetic)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds


def to_datetime(us: EpochUs) -> datetime:
    """EpochUs as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def format_time(us: EpochUs | None) -> str | None:
    """EpochUs as RFC 3339 UTC ('2026-11-22T10:00:00Z', with .ffffff only when needed)."""
    if us is None:
        return None
    dt = to_datetime(us)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
