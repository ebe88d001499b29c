"""SPEC §5 plan lock: the rows of a plan with call history are fixed; such plans stay."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from rating.deck import HEADER, parse_deck
from rating.lock import check_plan_edit
from rating.model import RatePlan, Scope
from rating.units import parse_time

JAN = parse_time("2026-01-01")
ROWS = ("44,UK,2026-01-01,,0.01,,60,60", "4420,London,2026-01-01,,0.02,,30,6")


def plan(*rows: str, scope: Scope = Scope.CUSTOMER, currency: str = "USD") -> RatePlan:
    text = "\n".join((HEADER, *rows)) + "\n"
    return RatePlan("retail-a", scope, currency, parse_deck(text, "retail-a.csv"))


USED = frozenset({("retail-a", "4420", JAN)})


def test_adding_rows_is_always_allowed() -> None:
    new = plan(*ROWS, "4420,London,2027-01-01,,0.03,,30,6", "33,France,2026-01-01,,0.01,,,")
    assert check_plan_edit(plan(*ROWS), new, USED) == []


def test_changing_a_used_row_is_refused() -> None:
    new = plan(ROWS[0], "4420,London,2026-01-01,,0.025,,30,6")
    (violation,) = check_plan_edit(plan(*ROWS), new, USED)
    assert (violation.plan, violation.code, violation.valid_since) == ("retail-a", "4420", JAN)
    assert "rate_per_min 0.02 -> 0.025" in violation.message
    assert "later valid_since" in violation.message


def test_any_field_of_a_used_row_counts() -> None:
    for changed in (
        "4420,Greater London,2026-01-01,,0.02,,30,6",
        "4420,London,2026-01-01,2027-01-01,0.02,,30,6",
        "4420,London,2026-01-01,,0.02,0.01,30,6",
        "4420,London,2026-01-01,,0.02,,60,6",
        "4420,London,2026-01-01,,0.02,,30,1",
    ):
        assert len(check_plan_edit(plan(*ROWS), plan(ROWS[0], changed), USED)) == 1, changed


def test_same_value_written_differently_is_not_a_change() -> None:
    new = plan(ROWS[0], "4420,London,2026-01-01T00:00:00Z,,0.0200,0,30,6")
    assert check_plan_edit(plan(*ROWS), new, USED) == []


def test_moving_a_used_row_in_the_file_is_not_a_change() -> None:
    new = plan("33,France,2026-01-01,,0.01,,,", ROWS[1], ROWS[0])
    assert check_plan_edit(plan(*ROWS), new, USED) == []


def test_removing_any_row_of_a_plan_with_history_is_refused() -> None:
    (violation,) = check_plan_edit(plan(*ROWS), plan(ROWS[0]), USED)
    assert violation.code == "4420" and "removed but has priced calls" in violation.message
    # 44 priced no call, but its plan has history (SPEC §5; found by an audit).
    (violation,) = check_plan_edit(plan(*ROWS), plan(ROWS[1]), USED)
    assert violation.code == "44" and "removed but its plan has call history" in violation.message


def test_rows_that_priced_no_call_are_fixed_too_once_the_plan_has_history() -> None:
    new = plan("44,UK,2026-01-01,,0.05,,1,1", ROWS[1])
    (violation,) = check_plan_edit(plan(*ROWS), new, USED)
    assert violation.code == "44" and "rate_per_min 0.01 -> 0.05" in violation.message
    assert "its plan has call history" in violation.message


def test_a_plan_without_history_may_be_edited_freely() -> None:
    new = plan("44,UK,2026-01-01,,0.05,,1,1")
    assert check_plan_edit(plan(*ROWS), new, frozenset({("retail-b", "4420", JAN)})) == []


def test_plan_with_history_cannot_be_deleted() -> None:
    (violation,) = check_plan_edit(plan(*ROWS), None, USED)
    assert violation.code is None and "cannot be deleted" in violation.message
    assert "plan 'retail-a'" in str(violation)


def test_plan_without_history_may_be_deleted() -> None:
    other = frozenset({("retail-b", "4420", JAN)})
    assert check_plan_edit(plan(*ROWS), None, other) == []


def test_scope_is_fixed_forever_even_without_history() -> None:
    (violation,) = check_plan_edit(plan(*ROWS), plan(*ROWS, scope=Scope.RESELLER), frozenset())
    assert "scope changed from customer to reseller" in violation.message


def test_currency_of_a_plan_with_history_is_fixed() -> None:
    violations = check_plan_edit(plan(*ROWS), plan(*ROWS, currency="EUR"), USED)
    assert [v.message.split(" ")[0] for v in violations] == ["currency"]
    assert check_plan_edit(plan(*ROWS), plan(*ROWS, currency="EUR"), frozenset()) == []


def test_violations_name_each_row() -> None:
    old = plan(*ROWS)
    used = USED | {("retail-a", "44", JAN)}
    new = replace(
        old, destinations=tuple(replace(d, rate_per_min=Decimal(1)) for d in old.destinations)
    )
    violations = check_plan_edit(old, new, used)
    assert sorted(v.code or "" for v in violations) == ["44", "4420"]
    assert str(violations[0]).startswith(
        "plan 'retail-a': code '44' valid_since 2026-01-01T00:00:00Z:"
    )
