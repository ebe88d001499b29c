"""The prefix index of one rate plan: longest-prefix match at a point in time (SPEC §5).

Built once per plan and never changed afterwards (OpenSIPS rate_cacher style): a reload
builds a new `PrefixIndex` beside the live one and the caller swaps one reference, so a call
being rated never sees half a deck.

Layout, chosen for CPython speed rather than textbook shape: one dict from code to the rows of
that code, plus the tuple of code lengths that exist in the plan, longest first. A lookup
slices the number at each existing length and stops at the first hit — at most one dict probe
per distinct code length, so the cost grows with number length, not with deck size, and a
slice plus a dict probe is cheaper in CPython than walking a per-digit trie of objects.

Time: every code's rows are precomputed into a timeline of segments `[start, next start)`
with the row that wins there (valid_since inclusive, valid_until exclusive, latest
valid_since among the rows valid at that instant), so resolving a time is one comparison in
the common case (the call is after the code's last change) and a bisect otherwise.

Fallback (a documented choice): when the longest matching code has no row valid at the call's
start (a promo on 4420 that ended, or a row that only starts in 2027), the next shorter code
that matches is tried, down to the catch-all. An expired promo must not leave 4420… unrated
while 44 is priced. Each code keeps a pointer to its longest shorter code for that walk.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from decimal import Decimal

from rating.deck import paused_gc
from rating.model import Destination, RatePlan
from rating.pace import EVERY, pace
from rating.tariff import Tariff
from rating.units import EpochUs

NEVER_BEFORE = -(1 << 63)  # bounds of a time span with no end on that side (EpochUs)
NEVER_AFTER = 1 << 63


class IndexedRow:
    """A destination row with its integer tariff, flattened for the rater's hot path."""

    __slots__ = (
        "billing_block_sec",
        "connection_sec",
        "den",
        "den2",
        "dest",
        "fee2",
        "rate2",
        "serial",
        "tariff",
    )

    def __init__(self, dest: Destination, serial: int, tariff: Tariff | None = None) -> None:
        if tariff is None:
            tariff = Tariff.of_destination(dest)
        self.dest = dest
        self.tariff = tariff
        self.serial = serial  # unique within one index; lets the rater key caches by int
        (
            self.connection_sec,
            self.billing_block_sec,
            self.fee2,
            self.rate2,
            self.den,
            self.den2,
        ) = tariff

    def __repr__(self) -> str:
        return f"IndexedRow({self.dest!r})"


class Code:
    """All rows of one code as a timeline, plus the next shorter code for fallback."""

    __slots__ = ("code", "last_row", "last_start", "parent", "rows", "starts")

    def __init__(
        self, code: str, starts: tuple[int, ...], rows: tuple[IndexedRow | None, ...]
    ) -> None:
        self.code = code
        self.starts = starts
        self.rows = rows
        self.last_start = starts[-1]
        self.last_row = rows[-1]
        self.parent: Code | None = None

    def at(self, when: EpochUs) -> IndexedRow | None:
        """The row of this code valid at `when`, or None."""
        if when >= self.last_start:
            return self.last_row
        i = bisect_right(self.starts, when) - 1
        return self.rows[i] if i >= 0 else None

    def window(self, when: EpochUs) -> tuple[IndexedRow | None, EpochUs, EpochUs]:
        """What `resolve(when)` gives, and the span `[lo, hi)` of times that give the same.

        The span is the intersection of the segments around `when` of every code the walk
        visits (the ones with no row then included: a row of theirs that starts would take
        over), so a caller may reuse the answer for any call starting inside it.
        """
        lo, hi = NEVER_BEFORE, NEVER_AFTER
        entry: Code | None = self
        while entry is not None:
            starts = entry.starts
            i = bisect_right(starts, when) - 1
            if i + 1 < len(starts) and starts[i + 1] < hi:
                hi = starts[i + 1]
            if i >= 0:
                if starts[i] > lo:
                    lo = starts[i]
                row = entry.rows[i]
                if row is not None:
                    return row, lo, hi
            entry = entry.parent
        return None, lo, hi

    def resolve(self, when: EpochUs) -> IndexedRow | None:
        """The row valid at `when` of this code, else of the longest shorter code that has one."""
        entry: Code | None = self
        while entry is not None:
            row = entry.last_row if when >= entry.last_start else entry.at(when)
            if row is not None:
                return row
            entry = entry.parent
        return None


def _timeline(rows: list[IndexedRow]) -> tuple[tuple[int, ...], tuple[IndexedRow | None, ...]]:
    """Segments of time and the winning row in each (None where no row is valid)."""
    if len(rows) == 1:
        dest = rows[0].dest
        if dest.valid_until is None:
            return (dest.valid_since,), (rows[0],)
        return (dest.valid_since, dest.valid_until), (rows[0], None)
    points = sorted(
        {r.dest.valid_since for r in rows}
        | {r.dest.valid_until for r in rows if r.dest.valid_until is not None}
    )
    starts: list[int] = []
    winners: list[IndexedRow | None] = []
    for point in points:
        best: IndexedRow | None = None
        for r in rows:
            d = r.dest
            if (
                d.valid_since <= point
                and (d.valid_until is None or point < d.valid_until)
                and (best is None or d.valid_since > best.dest.valid_since)
            ):
                best = r
        if winners and winners[-1] is best:
            continue  # same winner as the previous segment: merge
        starts.append(point)
        winners.append(best)
    return tuple(starts), tuple(winners)


class PrefixIndex:
    """Immutable longest-prefix index of one plan's destinations."""

    __slots__ = ("_codes", "_lengths", "_plan", "_row_count")

    def __init__(self, plan: RatePlan, codes: dict[str, Code], row_count: int) -> None:
        self._plan = plan
        self._codes = codes
        self._row_count = row_count
        # Lengths that exist, longest first; 0 stands for the catch-all (code "").
        self._lengths = tuple(sorted({len(c) for c in codes}, reverse=True))

    @classmethod
    def build(cls, plan: RatePlan) -> PrefixIndex:
        """Index a plan. Assumes a validated deck (one row per (code, valid_since))."""
        with paused_gc():
            return cls._build(plan)

    @classmethod
    def _build(cls, plan: RatePlan) -> PrefixIndex:
        grouped: dict[str, list[IndexedRow]] = {}
        # Decks repeat a few hundred prices over thousands of codes: share their Tariffs.
        tariffs: dict[tuple[Decimal, Decimal, int, int], Tariff] = {}
        for serial, dest in enumerate(plan.destinations):
            if not serial % EVERY:
                pace()
            price = (
                dest.rate_per_min,
                dest.connection_fee,
                dest.connection_sec,
                dest.billing_block_sec,
            )
            tariff = tariffs.get(price)
            if tariff is None:
                tariff = tariffs[price] = Tariff.of_destination(dest)
            row = IndexedRow(dest, serial, tariff)
            group = grouped.get(dest.code)
            if group is None:
                grouped[dest.code] = [row]
            else:
                group.append(row)
        codes: dict[str, Code] = {}
        for n, (code, group) in enumerate(grouped.items()):
            if not n % EVERY:
                pace()
            starts, winners = _timeline(group)
            codes[code] = Code(code, starts, winners)
        for n, (code, entry) in enumerate(codes.items()):
            if not n % EVERY:
                pace()
            # The longest shorter code that is a prefix of this one (down to the catch-all).
            for length in range(len(code) - 1, -1, -1):
                parent = codes.get(code[:length])
                if parent is not None:
                    entry.parent = parent
                    break
        return cls(plan, codes, len(plan.destinations))

    @property
    def plan(self) -> RatePlan:
        """The plan this index was built from."""
        return self._plan

    def __len__(self) -> int:
        """Number of distinct codes (a catch-all counts as one)."""
        return len(self._codes)

    @property
    def row_count(self) -> int:
        """Number of destination rows indexed."""
        return self._row_count

    def codes(self) -> Iterator[str]:
        """The distinct codes, in deck order of first appearance."""
        return iter(self._codes)

    def longest(self, digits: str) -> Code | None:
        """The longest code that is a prefix of `digits`, whatever its rows' validity.

        Independent of time, so a caller may keep it per number (the rater does) and
        finish with `Code.resolve`, which walks to shorter codes when this one has no row
        valid at the call's start.
        """
        get = self._codes.get
        size = len(digits)
        for length in self._lengths:
            if length <= size:
                entry = get(digits[:length])
                if entry is not None:
                    return entry
        return None

    def match(self, digits: str, at: EpochUs) -> IndexedRow | None:
        """The row that prices `digits` at `at`: longest valid prefix, with fallback."""
        entry = self.longest(digits)
        return None if entry is None else entry.resolve(at)

    def lookup(self, digits: str, at: EpochUs) -> Destination | None:
        """The destination row that prices `digits` for a call starting at `at`, or None."""
        row = self.match(digits, at)
        return None if row is None else row.dest
