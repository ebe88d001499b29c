"""LogPace: the first occurrence at once, then at most once per period, per key."""

from __future__ import annotations

import pytest

from vmgated import logpace
from vmgated.logpace import LogPace


def test_first_at_once_then_once_per_period_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(logpace.time, "monotonic", lambda: now[0])
    pace = LogPace(10.0)
    assert pace.due() and not pace.due()
    assert pace.due("expire") and not pace.due("expire")  # keys are independent
    now[0] += 9.9
    assert not pace.due() and not pace.due("expire")
    now[0] += 0.1
    assert pace.due() and pace.due("expire") and not pace.due()
