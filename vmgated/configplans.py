"""Loading the rate plans a config names: deck CSV files or inline YAML destinations.

Deck problems keep the deck's own file and line (`conf/decks/retail-a.csv:17: rate_per_min:
...`); inline problems point at the YAML line of the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rating.deck import DeckError, destinations_from_rows, parse_deck
from rating.model import Destination, RatePlan
from vmgated.configparse import Problem, Reader, child, unreadable

if TYPE_CHECKING:
    from vmgated.config import PlanConfig


def load_plans(
    configs: Iterable[PlanConfig],
    paths: Mapping[str, str],
    inline: Mapping[str, Any],
    reader: Reader,
    display: Callable[[Path], str],
) -> dict[str, RatePlan]:
    """Build every plan; problems go to `reader`. A plan whose deck fails is kept, empty, so
    references to it are not also reported as dangling."""
    plans: dict[str, RatePlan] = {}
    for config in configs:
        path = paths[config.name]
        if config.deck is not None:
            destinations = _from_deck(config.deck, path, reader, display(config.deck))
        else:
            destinations = _from_inline(inline[config.name], path, reader)
        plans[config.name] = RatePlan(config.name, config.scope, config.currency, destinations)
    return plans


def _from_deck(deck: Path, path: str, reader: Reader, shown: str) -> tuple[Destination, ...]:
    try:
        text = deck.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reader.problem(child(path, "deck"), f"cannot read {shown}: {unreadable(exc)}")
        return ()
    try:
        return parse_deck(text, shown)
    except ValueError as exc:
        for err in _errors(exc):
            if isinstance(err, DeckError):
                reader.problems.append(Problem(err.origin, err.line, err.field, err.message))
            else:
                reader.problem(child(path, "deck"), str(err))
        return ()


def _from_inline(value: Any, path: str, reader: Reader) -> tuple[Destination, ...]:
    dpath = child(path, "destinations")
    items = reader.sequence(value, dpath)
    rows: list[dict[str, object]] = []
    lines: list[int] = []
    for i, item in enumerate(items):
        ipath = child(dpath, i)
        if not isinstance(item, dict):
            reader.problem(ipath, "must be a mapping such as {code: '44', rate_per_min: '0.02'}")
            continue
        # The YAML source text, not YAML's typing: `rate_per_min: 0.012` must stay an exact
        # decimal, `code: 0044` must not become octal, a date stays the date written.
        row: dict[str, object] = {}
        for key, cell in item.items():
            raw = reader.doc.raw.get(child(ipath, str(key)))
            row[str(key)] = raw if cell is not None and raw is not None else cell
        rows.append(row)
        lines.append(reader.line(ipath))
    if len(rows) != len(items):
        return ()
    try:
        return destinations_from_rows(rows, reader.doc.file, lines)
    except ValueError as exc:
        for err in _errors(exc):
            if isinstance(err, DeckError) and err.field:
                sub = child(path, err.field)
                reader.problem(sub, err.message)
            else:
                reader.problem(dpath, str(err))
        return ()


def _errors(exc: ValueError) -> tuple[ValueError, ...]:
    found = getattr(exc, "errors", None)
    if isinstance(found, (list, tuple)) and found:
        return tuple(e for e in found if isinstance(e, ValueError))
    return (exc,)
