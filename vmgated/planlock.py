"""The plan lock (SPEC §5) as operator messages: file:line: field: what and what to do instead.

`rating.lock.check_plan_edit` knows the rule; this module places each refusal at the deck row
the operator edited, for `SIGHUP`/`vmgatectl reload` and `vmgatectl rates import`.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from rating.lock import LockViolation, check_plan_edit
from rating.model import Destination, RatePlan
from rating.units import EpochUs

_CONTENT = ("description", "valid_until", "rate_per_min", "connection_fee", "connection_sec",
            "billing_block_sec")


def _row(plan: RatePlan | None, code: str | None, since: EpochUs | None) -> Destination | None:
    if plan is None:
        return None
    for d in plan.destinations:
        if d.code == code and d.valid_since == since:
            return d
    return None


def describe(v: LockViolation, old: RatePlan, new: RatePlan | None, where: str) -> str:
    """One violation located at its row (`deck:line: field: ...`), else at the plan's file."""
    was, now = _row(old, v.code, v.valid_since), _row(new, v.code, v.valid_since)
    if was is not None and now is not None:
        fields = ",".join(f for f in _CONTENT if getattr(was, f) != getattr(now, f))
        return f"{now.origin or where}: {fields}: {v}"
    if was is not None:
        return f"{where}: code: {v} (it was {was.origin})"
    return f"{where}: {v}"


def lock_problems(
    old: Mapping[str, RatePlan],
    new: Mapping[str, RatePlan],
    used: Set[tuple[str, str, EpochUs]],
    where: Mapping[str, str],
) -> list[str]:
    """Every refused edit when the `old` plans become `new`; `where` names each plan's file."""
    problems: list[str] = []
    for name, old_plan in old.items():
        new_plan = new.get(name)
        for v in check_plan_edit(old_plan, new_plan, used):
            problems.append(describe(v, old_plan, new_plan, where.get(name, f"plan {name}")))
    return problems
