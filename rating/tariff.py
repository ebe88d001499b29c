"""Tariff arithmetic of SPEC §5: charged seconds and the amount of one leg, exactly.

Two forms of the same formula live here:

* `charged_seconds` and `amount_micros` are the reference, written the way SPEC §5 reads
  (Decimal, half-up to 6 decimals once per leg).
* `Tariff` is the same price as integer numerators over one denominator, precomputed once per
  destination row when a deck is indexed, so the hot path of the rater is a few integer
  multiplications and one floor division with exact half-up rounding. The tests prove with
  hypothesis that both forms give the same micro-units for every duration.

Rounding happens once per leg on the whole amount, never per billing block: a deck with a
0.0123/min rate and 6 s blocks must not drift by a fraction of a micro-unit per block.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import NamedTuple

from rating.model import Destination
from rating.units import MICROS

_SIXTY = Decimal(60)
_ONE = Decimal(1)


def charged_seconds(billsec: int, connection_sec: int, billing_block_sec: int) -> int:
    """Seconds a leg is charged for: SPEC §5, to the letter.

    0 when the call was not answered (`billsec` 0). Otherwise `max(connection_sec, billsec)`
    rounded up to `connection_sec + k·billing_block_sec`; with `connection_sec` 0 the first
    block is simply `billing_block_sec`, and a block of 0 means per-second billing after the
    connection period.
    """
    if billsec <= 0:
        return 0
    charged = connection_sec if billsec < connection_sec else billsec
    if billing_block_sec > 0 and charged > connection_sec:
        # Ceiling division on ints: -(-a // b).
        charged = connection_sec - (-(charged - connection_sec) // billing_block_sec) * (
            billing_block_sec
        )
    return charged


def amount_micros(
    rate_per_min: Decimal, connection_fee: Decimal, charged_sec: int, answered: bool
) -> int:
    """`connection_fee + rate_per_min × charged / 60`, half-up to 6 decimals, in micro-units.

    0 for an unanswered call: the connection fee is only due once the call is answered. This is
    the reference form; the rater uses `Tariff.amount`, proven equal by the tests.
    """
    if not answered:
        return 0
    # Dividing by 60 can repeat forever (…333, …667, never …999), so a wide context makes the
    # one rounding below the only rounding that matters, even for very large amounts.
    with localcontext() as ctx:
        ctx.prec = 80
        exact = connection_fee + rate_per_min * Decimal(charged_sec) / _SIXTY
        return int((exact * MICROS).quantize(_ONE, rounding=ROUND_HALF_UP))


class Tariff(NamedTuple):
    """One destination's price as integers, for exact half-up micro-units without Decimal.

    For `charged` seconds the amount in micro-units is
    `(fee2 + rate2 × charged + den) // den2`, where `den2 = 2·den`: that is
    `round_half_up((fee + rate × charged / 60) × 10⁶)` written over the common denominator
    `den` of the fee and the per-second rate, doubled so that the half-up offset stays an
    integer. Valid for non-negative fees and rates (decks refuse negatives).
    """

    connection_sec: int
    billing_block_sec: int
    fee2: int
    rate2: int
    den: int
    den2: int

    @classmethod
    def of(
        cls,
        rate_per_min: Decimal,
        connection_fee: Decimal,
        connection_sec: int,
        billing_block_sec: int,
    ) -> Tariff:
        """Precompute the integer form of a price (exact: Decimals are ratios of ints)."""
        if rate_per_min < 0 or connection_fee < 0:
            raise ValueError("Tariff needs a non-negative rate and connection fee")
        rate_num, rate_den = rate_per_min.as_integer_ratio()
        fee_num, fee_den = connection_fee.as_integer_ratio()
        # amount×10⁶ = fee_num/fee_den·10⁶ + rate_num·charged/(rate_den·60)·10⁶
        den = fee_den * rate_den * 60
        fee = fee_num * rate_den * 60 * MICROS
        rate = rate_num * fee_den * MICROS
        return cls(connection_sec, billing_block_sec, 2 * fee, 2 * rate, den, 2 * den)

    @classmethod
    def of_destination(cls, dest: Destination) -> Tariff:
        """The integer tariff of one deck row."""
        return cls.of(
            dest.rate_per_min, dest.connection_fee, dest.connection_sec, dest.billing_block_sec
        )

    def charged(self, billsec: int) -> int:
        """Charged seconds for `billsec` (same rule as `charged_seconds`)."""
        return charged_seconds(billsec, self.connection_sec, self.billing_block_sec)

    def amount(self, charged_sec: int) -> int:
        """Micro-units for an answered leg charged `charged_sec` seconds (> 0)."""
        return (self.fee2 + self.rate2 * charged_sec + self.den) // self.den2

    def price(self, billsec: int) -> tuple[int, int]:
        """`(charged_sec, amount_micros)` for a leg of `billsec` seconds (0, 0 unanswered)."""
        if billsec <= 0:
            return 0, 0
        charged = self.charged(billsec)
        return charged, (self.fee2 + self.rate2 * charged + self.den) // self.den2
