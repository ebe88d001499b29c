"""Rate decks: the CSV of SPEC §5 (and inline YAML rows) read exactly into `Destination`s.

Header (columns may come in any order, each exactly once):
`code,description,valid_since,valid_until,rate_per_min,connection_fee,connection_sec,billing_block_sec`

Cells, and what an empty cell means:

* `code`: digits only (the dialled number is normalised to digits); empty = catch-all.
* `description`: free text, may be empty.
* `valid_since`: RFC 3339 (`2026-01-01T00:00:00Z`, offsets allowed), a bare date
  (`2026-01-01` = midnight UTC) or epoch seconds. Times without an offset are UTC (all rate
  times are UTC). Empty = since ever (the epoch), handy for tiny inline plans.
* `valid_until`: same forms, exclusive; empty = open-ended. Must be after `valid_since`.
* `rate_per_min`: required, a decimal >= 0 (a missing price must never bill as free).
* `connection_fee`: decimal >= 0; empty = 0.
* `connection_sec`: whole seconds >= 0; empty = 0 (no minimum period).
* `billing_block_sec`: whole seconds >= 0; empty = 1 (per-second billing; 0 means the same).

Upper bounds, so that no leg of any call can overflow the ledger's 64-bit micro-units (a
typo such as `1e30` must be a deck error, not a call that cannot be written): prices at most
`MONEY_MAX` (10,000,000 currency units — a premium-rate minute in the weakest currency is far
below it), `connection_sec` and `billing_block_sec` at most `SECONDS_MAX` (one day). With
`calls.max_duration` at most 7 days, a leg is then below 1.2 × 10¹⁸ micro-units.

Money is read with `Decimal`, never float. Errors are collected, not stopped at: the operator
running `vmgatectl check` sees every bad cell in one go. What is raised is a `DeckError`; when
there is more than one problem it is a `DeckErrors` (a `DeckError` subclass, first problem in
its attributes, all of them in `.errors`, one per line in `str()`), so callers that catch
`DeckError` and print it need not know the difference.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal

from rating.model import Destination
from rating.pace import EVERY, pace
from rating.units import EpochUs, UnitError, format_time, from_datetime, parse_decimal, parse_time

COLUMNS: tuple[str, ...] = (
    "code",
    "description",
    "valid_since",
    "valid_until",
    "rate_per_min",
    "connection_fee",
    "connection_sec",
    "billing_block_sec",
)
HEADER = ",".join(COLUMNS)
DEFAULT_CONNECTION_FEE = Decimal(0)
MONEY_MAX = Decimal(10_000_000)  # largest rate_per_min / connection_fee (see module doc)
SECONDS_MAX = 86_400  # largest connection_sec / billing_block_sec
DEFAULT_CONNECTION_SEC = 0
DEFAULT_BILLING_BLOCK_SEC = 1
_MAX_SHOWN = 25  # errors printed by str(DeckErrors); all of them stay in .errors


class DeckError(ValueError):
    """One problem in a deck, located by origin (file), line and field."""

    def __init__(self, origin: str, line: int, field: str, message: str) -> None:
        self.origin = origin
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.origin}:{self.line}" if self.line else self.origin
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"

    @property
    def errors(self) -> tuple[DeckError, ...]:
        """Every problem found (just this one for a single error)."""
        return (self,)


class DeckErrors(DeckError):
    """Several problems in one deck; attributes are the first one's, `.errors` has them all."""

    def __init__(self, errors: Sequence[DeckError]) -> None:
        first = errors[0]
        self._all = tuple(errors)
        super().__init__(first.origin, first.line, first.field, first.message)
        lines = [str(e.args[0]) for e in self._all[:_MAX_SHOWN]]
        if len(self._all) > _MAX_SHOWN:
            lines.append(f"{first.origin}: ... and {len(self._all) - _MAX_SHOWN} more errors")
        self.args = ("\n".join(lines),)

    @property
    def errors(self) -> tuple[DeckError, ...]:
        """Every problem found, in file order."""
        return self._all


def _raise(errors: list[DeckError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DeckErrors(errors)


class _RowReader:
    """Validates cells of one deck into Destinations, collecting errors as it goes."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[DeckError] = []
        self._seen: dict[tuple[str, EpochUs], str] = {}
        self._times: dict[str, EpochUs] = {}  # decks repeat a handful of dates
        self._decimals: dict[str, Decimal] = {}
        # Raw cell texts already seen in a valid row, with their value: a 100,000-row deck
        # repeats a few hundred prices and dates, so most rows take the `fast` path.
        self._good_money: dict[str, Decimal] = {}
        self._good_secs: dict[str, int] = {}
        self._good_times: dict[str, EpochUs] = {}

    def fail(self, line: int, field: str, message: str) -> None:
        self.errors.append(DeckError(self.origin, line, field, message))

    def decimal(self, line: int, field: str, text: str, default: Decimal | None) -> Decimal:
        text = text.strip()
        if not text:
            if default is None:
                self.fail(line, field, "is empty; give a decimal such as 0.0123")
                return Decimal(0)
            return default
        value = self._decimals.get(text)
        if value is None:
            try:
                value = parse_decimal(text)
            except UnitError:
                self.fail(line, field, f"{text!r} is not a decimal number (write e.g. 0.0123)")
                return Decimal(0)
            self._decimals[text] = value
        if value < 0:
            what = "rates" if field == "rate_per_min" else "fees"
            self.fail(line, field, f"{text!r} is negative; {what} must be >= 0")
        elif value > MONEY_MAX:
            shown = text[:40]
            why = f"{shown!r} is above {MONEY_MAX}, the largest price a deck takes"
            self.fail(line, field, why)
        return value

    def seconds(self, line: int, field: str, text: str, default: int) -> int:
        text = text.strip()
        if not text:
            return default
        if not (text.isascii() and text.isdigit()):
            if text.startswith("-") and text[1:].isdigit():
                self.fail(line, field, f"{text!r} is negative; seconds must be >= 0")
            else:
                self.fail(line, field, f"{text!r} is not a whole number of seconds")
            return default
        digits = text.lstrip("0")  # int() of thousands of digits would raise, not refuse
        if len(digits) > 6 or int(digits or "0") > SECONDS_MAX:
            self.fail(line, field, f"{text[:40]!r} is longer than {SECONDS_MAX} s (a day)")
            return default
        return int(text)

    def time(self, line: int, field: str, text: str) -> EpochUs | None:
        text = text.strip()
        if not text:
            return None
        value = self._times.get(text)
        if value is None:
            try:
                value = _parse_when(text)
            except UnitError:
                self.fail(
                    line,
                    field,
                    f"{text!r} is not a time; write 2026-01-01, 2026-01-01T00:00:00Z "
                    "or epoch seconds",
                )
                return None
            self._times[text] = value
        return value

    def row(
        self, line: int, cells: Mapping[str, str], prefix: str = "", label: str = ""
    ) -> Destination | None:
        """One row of text cells (keys from COLUMNS) to a Destination, or None on error.

        `label` names the row in duplicate messages and in `Destination.origin` when there is
        no line number (inline rows without known lines).
        """
        label = label or f"line {line}"
        before = len(self.errors)
        code = cells["code"].strip()
        if code and not (code.isascii() and code.isdigit()):
            self.fail(
                line,
                prefix + "code",
                f"{code!r} is not numeric; a code is digits only (write 4420, not +44 20), "
                "or empty for the catch-all",
            )
        since = self.time(line, prefix + "valid_since", cells["valid_since"])
        until = self.time(line, prefix + "valid_until", cells["valid_until"])
        since_us = 0 if since is None else since
        if until is not None and until <= since_us:
            self.fail(
                line,
                prefix + "valid_until",
                f"{format_time(until)} is not after valid_since {format_time(since_us)}; "
                "a row's window must end after it starts (leave it empty for open-ended)",
            )
        rate = self.decimal(line, prefix + "rate_per_min", cells["rate_per_min"], None)
        fee = self.decimal(
            line, prefix + "connection_fee", cells["connection_fee"], DEFAULT_CONNECTION_FEE
        )
        conn = self.seconds(
            line, prefix + "connection_sec", cells["connection_sec"], DEFAULT_CONNECTION_SEC
        )
        block = self.seconds(
            line,
            prefix + "billing_block_sec",
            cells["billing_block_sec"],
            DEFAULT_BILLING_BLOCK_SEC,
        )
        key = (code, since_us)
        first = self._seen.get(key)
        if first is not None:
            self.fail(
                line,
                prefix + "valid_since",
                f"code {code!r} with valid_since {format_time(since_us)} repeats {first}; "
                "two rows with the same (code, valid_since) are ambiguous — give the newer "
                "one a later valid_since",
            )
        else:
            self._seen[key] = label
        if len(self.errors) != before:
            return None
        self._remember(cells, since_us, until, rate, fee, conn, block)
        return Destination(
            code=code,
            description=cells["description"].strip(),
            valid_since=since_us,
            valid_until=until,
            rate_per_min=rate,
            connection_fee=fee,
            connection_sec=conn,
            billing_block_sec=block,
            origin=f"{self.origin}:{line}" if line > 0 else f"{self.origin} {label}",
        )

    def _remember(
        self,
        cells: Mapping[str, str],
        since: EpochUs,
        until: EpochUs | None,
        rate: Decimal,
        fee: Decimal,
        conn: int,
        block: int,
    ) -> None:
        """Record a valid row's cell texts so that `fast` can reuse them."""
        if cells["valid_since"]:
            self._good_times[cells["valid_since"]] = since
        if cells["valid_until"] and until is not None:
            self._good_times[cells["valid_until"]] = until
        self._good_money[cells["rate_per_min"]] = rate
        if cells["connection_fee"]:
            self._good_money[cells["connection_fee"]] = fee
        if cells["connection_sec"]:
            self._good_secs[cells["connection_sec"]] = conn
        if cells["billing_block_sec"]:
            self._good_secs[cells["billing_block_sec"]] = block

    def fast(self, line: int, cells: list[str]) -> Destination | None:
        """A row in COLUMNS order whose cells were all seen valid before, else None.

        None means "not sure", never "invalid": the caller then runs `row`, which validates
        everything and says what is wrong.
        """
        code, description, since_t, until_t, rate_t, fee_t, conn_t, block_t = cells
        if code and not (code.isdigit() and code.isascii()):
            return None
        if since_t:
            since = self._good_times.get(since_t)
            if since is None:
                return None
        else:
            since = 0
        until: EpochUs | None = None
        if until_t:
            until = self._good_times.get(until_t)
            if until is None or until <= since:
                return None
        rate = self._good_money.get(rate_t)
        fee = self._good_money.get(fee_t) if fee_t else DEFAULT_CONNECTION_FEE
        conn = self._good_secs.get(conn_t) if conn_t else DEFAULT_CONNECTION_SEC
        block = self._good_secs.get(block_t) if block_t else DEFAULT_BILLING_BLOCK_SEC
        if rate is None or fee is None or conn is None or block is None:
            return None
        key = (code, since)
        if key in self._seen:
            return None
        self._seen[key] = f"line {line}"
        return Destination(
            code, description.strip(), since, until, rate, fee, conn, block, f"{self.origin}:{line}"
        )


def _parse_when(text: str) -> EpochUs:
    """RFC 3339, epoch seconds, or a bare date (midnight UTC)."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise UnitError(f"{text!r} is not a date") from exc
        return from_datetime(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return parse_time(text)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector while bulk-building acyclic objects.

    A 100,000-row deck allocates ~a million objects; CPython's generational collector would
    traverse them again and again (about 40 % of load time), although none of them can form a
    cycle. Reference counting still frees everything as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_deck(text: str, origin: str) -> tuple[Destination, ...]:
    """Read a deck CSV (SPEC §5) into Destinations in file order; raise DeckError on problems.

    `origin` names the file in errors and in each row's `origin` (`decks/retail-a.csv:17`).
    Blank lines are skipped; a UTF-8 byte-order mark before the header is tolerated.
    """
    with paused_gc():
        return _parse_deck(text, origin)


def _parse_deck(text: str, origin: str) -> tuple[Destination, ...]:
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for cells in reader:
        if any(c.strip() for c in cells):
            header = [c.strip() for c in cells]
            break
    if header is None:
        raise DeckError(origin, 1, "header", f"the deck is empty; the first line must be {HEADER}")
    header_line = reader.line_num
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    doubled = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or doubled:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if unknown:
            parts.append("unknown " + ", ".join(repr(c) for c in unknown))
        if doubled:
            parts.append("repeated " + ", ".join(doubled))
        raise DeckError(
            origin, header_line, "header", "; ".join(parts) + f"; the header must be {HEADER}"
        )
    rows = _RowReader(origin)
    out: list[Destination] = []
    width = len(header)
    in_order = tuple(header) == COLUMNS
    for cells in reader:
        line = reader.line_num
        if not line % EVERY:
            pace()
        if len(cells) != width:
            if not any(c.strip() for c in cells):
                continue
            rows.fail(
                line, "row", f"has {len(cells)} cells, the header has {width}; expected {HEADER}"
            )
            continue
        dest = rows.fast(line, cells) if in_order else None
        if dest is None:
            dest = rows.row(
                line, dict(zip(header if not in_order else COLUMNS, cells, strict=True))
            )
        if dest is not None:
            out.append(dest)
    _raise(rows.errors)
    return tuple(out)


def _cell(rows: _RowReader, line: int, field: str, value: object) -> str:
    """An inline (YAML) value as deck-cell text; floats are refused because they are inexact."""
    if value is None:
        return ""
    if isinstance(value, bool):
        rows.fail(line, field, f"{value!r} is a boolean; give a number or text")
        return ""
    if isinstance(value, float):
        rows.fail(
            line,
            field,
            f"{value!r} was read as a binary float, which cannot hold money exactly; "
            f'quote it in the YAML ({field.rsplit(".", 1)[-1]}: "{value!r}")',
        )
        return ""
    if isinstance(value, str | int | Decimal):
        return str(value)
    if isinstance(value, datetime):
        # PyYAML turns unquoted timestamps into datetimes; naive ones are UTC like all rate times.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    rows.fail(line, field, f"{value!r} is a {type(value).__name__}; give a number or text")
    return ""


def destinations_from_rows(
    rows: Sequence[Mapping[str, object]],
    origin: str,
    lines: Sequence[int] | None = None,
) -> tuple[Destination, ...]:
    """Inline destinations (YAML mappings) with the same rules and defaults as a deck CSV.

    Values may be str, int or Decimal (and YAML dates/timestamps for the validity times); a
    YAML float is refused with a hint to quote it. Errors name `destinations[i].field` and,
    when `lines` is given, the YAML line of row i. `code` is required (`code: ""` is the
    catch-all) so that a forgotten key does not silently become a catch-all.
    """
    reader = _RowReader(origin)
    out: list[Destination] = []
    for i, row in enumerate(rows):
        line = lines[i] if lines is not None and i < len(lines) else 0
        prefix = f"destinations[{i}]."
        unknown = [k for k in row if k not in COLUMNS]
        for key in unknown:
            reader.fail(
                line, prefix + str(key), f"unknown key; a destination has {', '.join(COLUMNS)}"
            )
        if "code" not in row:
            reader.fail(line, prefix + "code", "is missing; use code: '' for the catch-all")
        if "rate_per_min" not in row:
            reader.fail(line, prefix + "rate_per_min", "is missing; every row needs a price")
        if unknown or "code" not in row or "rate_per_min" not in row:
            continue
        before = len(reader.errors)
        cells = {c: _cell(reader, line, prefix + c, row.get(c)) for c in COLUMNS}
        if len(reader.errors) != before:
            continue
        label = f"line {line}" if line else f"destinations[{i}]"
        dest = reader.row(line, cells, prefix, label)
        if dest is not None:
            out.append(dest)
    _raise(reader.errors)
    return tuple(out)
