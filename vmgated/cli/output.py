"""How vmgatectl prints: aligned plain-text tables for people, JSON for tools.

Tables are plain text (no colour, no box drawing) so they paste into tickets and e-mails and
survive `| less`. Numeric-looking columns are right-aligned. JSON never carries a float:
money and rates are already strings with exact decimals when they reach here, and a stray
`Decimal` is written as its exact text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_Q6 = Decimal("0.000001")


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, left: Collection[str] = ()
) -> str:
    """Rows under a header line, columns padded to their widest cell.

    None prints as '-'. A column whose non-empty cells are all numbers is right-aligned,
    unless its header is in `left` (digit strings that are not quantities: prefixes, ids).
    """
    cells = [[_cell(v) for v in row] for row in rows]
    width = len(headers)
    for row in cells:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} cells, the header has {width}")
    sizes = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        headers[i] not in left
        and any(r[i] not in ("", "-") for r in cells)
        and all(r[i] in ("", "-") or _NUMBER.match(r[i]) for r in cells)
        for i in range(width)
    ]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            cell.rjust(sizes[i]) if numeric[i] else cell.ljust(sizes[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format_decimal(value)
    text = str(value)
    if not text.isprintable():
        # Callers and callees come from the wire (SIP users, CDR lines): an ESC sequence in
        # one must show as text, not be obeyed by the clerk's terminal.
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def format_decimal(value: Decimal) -> str:
    """A rate or fee with at least 6 decimals ('0.012000'), more only when the deck has them."""
    if value == value.quantize(_Q6):
        return f"{value.quantize(_Q6):f}"
    return f"{value.normalize():f}"


def _default(value: object) -> Any:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (Path, datetime)):
        return str(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(value: object) -> str:
    """Indented JSON, keys in the order given, non-ASCII kept readable."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=_default)


def print_json(value: object, out: TextIO | None = None) -> None:
    """Write `to_json(value)` and a newline to `out` (stdout by default)."""
    import sys

    (out or sys.stdout).write(to_json(value) + "\n")
