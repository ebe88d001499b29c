"""The plan lock of SPEC §5 as a pure function, so the ledger (which knows history) enforces it.

Once a plan has priced a call, its rows are part of history: none may be removed or changed in
any field, whether or not that row itself priced a call (SPEC §5: "an edit that changes an
existing destination row is refused"; add a row with a later `valid_since` instead). A plan
with any history may not be deleted, nor may its currency change (every stored amount would
change meaning). A plan's scope never changes, history or not. Adding rows is always allowed;
a plan without history may be edited freely.

A row is identified by `(plan name, code, valid_since)`, exactly what `Leg` records (`plan`,
`prefix`, `valid_since`). `Destination.origin` (file and line) is not part of a row's content:
adding rows above a used one shifts its line without changing it.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from rating.model import Destination, RatePlan
from rating.pace import EVERY, pace
from rating.units import EpochUs, format_time

_CONTENT = (
    "description",
    "valid_until",
    "rate_per_min",
    "connection_fee",
    "connection_sec",
    "billing_block_sec",
)


@dataclass(frozen=True, slots=True)
class LockViolation:
    """One refused edit; `code`/`valid_since` are None when the whole plan is concerned."""

    plan: str
    code: str | None
    valid_since: EpochUs | None
    message: str

    def __str__(self) -> str:
        if self.code is None:
            return f"plan {self.plan!r}: {self.message}"
        return (
            f"plan {self.plan!r}: code {self.code!r} valid_since "
            f"{format_time(self.valid_since)}: {self.message}"
        )


def _shown(value: object) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, int) and not isinstance(value, bool) and value > 10**12:
        return str(format_time(value))
    return str(value)


def check_plan_edit(
    old: RatePlan,
    new: RatePlan | None,
    used: Set[tuple[str, str, EpochUs]],
) -> list[LockViolation]:
    """Violations of the plan lock when `old` becomes `new` (None: the plan is deleted).

    `used` holds the `(plan, code, valid_since)` rows that have call history (any plan; rows
    of other plans are ignored). An empty list means the edit is allowed.
    """
    name = old.name
    mine = sorted((code, since) for plan, code, since in used if plan == name)
    violations: list[LockViolation] = []
    if new is None:
        if mine:
            violations.append(
                LockViolation(
                    name,
                    None,
                    None,
                    f"has call history ({len(mine)} rows priced calls); a plan with history "
                    "cannot be deleted — detach it or add rows with a later valid_since",
                )
            )
        return violations
    if new.scope != old.scope:
        violations.append(
            LockViolation(
                name,
                None,
                None,
                f"scope changed from {old.scope} to {new.scope}; a plan's scope is fixed "
                "when it is created — create a new plan instead",
            )
        )
    if mine and new.currency != old.currency:
        violations.append(
            LockViolation(
                name,
                None,
                None,
                f"currency changed from {old.currency} to {new.currency} on a plan with call "
                "history; create a new plan instead",
            )
        )
    if not mine:
        return violations
    before = _rows(old.destinations)
    after = _rows(new.destinations)
    priced = set(mine)
    for n, ((code, since), was) in enumerate(sorted(before.items())):
        if not n % EVERY:
            pace()
        # SPEC §5: once the plan has history every existing row is fixed, not only the rows
        # that priced a call (the rows a call did not use are still the plan that was sold).
        why = "has priced calls" if (code, since) in priced else "its plan has call history"
        now = after.get((code, since))
        if now is None:
            violations.append(
                LockViolation(
                    name,
                    code,
                    since,
                    f"was removed but {why}; keep it and add a row with a later valid_since "
                    "to supersede it",
                )
            )
            continue
        changed = [
            f"{field} {_shown(getattr(was, field))} -> {_shown(getattr(now, field))}"
            for field in _CONTENT
            if getattr(was, field) != getattr(now, field)
        ]
        if changed:
            violations.append(
                LockViolation(
                    name,
                    code,
                    since,
                    "changed (" + ", ".join(changed) + f") but {why}; the rows of a plan with "
                    "history are fixed — add a row with a later valid_since instead",
                )
            )
    return violations


def _rows(dests: tuple[Destination, ...]) -> dict[tuple[str, EpochUs], Destination]:
    rows: dict[tuple[str, EpochUs], Destination] = {}
    for n, d in enumerate(dests):
        if not n % EVERY:
            pace()
        rows[(d.code, d.valid_since)] = d
    return rows
