"""The periodic tick keeps going whatever one of its steps does, and an expiry that hits a bug
costs only the call that hit it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from example_tenant import pipeline_failing_on
from sipbuild import UAC, UAS, request, response

from sip.message import parse
from vmgated.app import App
from vmgated.config import load_config
from vmgated.hepparse import INTERNAL_ERROR

ROOT = Path(__file__).resolve().parents[2]


class _Tracker:
    def capture(self) -> tuple[()]:
        return ()


class _Pipeline:
    def __init__(self) -> None:
        self.expired = 0
        self.tracker = _Tracker()

    def expire(self) -> int:
        self.expired += 1
        raise RuntimeError("a bug in expiry")


class _Journal:
    def __init__(self) -> None:
        self.due = 0
        self.done = 0
        self.failed = 0

    def checkpoint_due(self) -> bool:
        self.due += 1
        return True

    def begin_checkpoint(self) -> int:
        raise OSError(24, "Too many open files")

    def checkpoint_done(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed


def test_a_step_that_raises_neither_stops_the_others_nor_the_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_path = ROOT / "conf" / "vmgated.yaml"

    async def main() -> tuple[App, _Pipeline, _Journal, list[str]]:
        app = App(config_path, load_config(config_path))
        pipeline, journal, drained = _Pipeline(), _Journal(), []
        app.pipeline = pipeline  # type: ignore[assignment]
        app.journal = journal  # type: ignore[assignment]
        app.drain_backlog = lambda: drained.append("drained")  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="vmgated"):
            app.tick()
            app.tick()  # the same failures again: not logged twice within LOG_EVERY
        return app, pipeline, journal, drained

    _app, pipeline, journal, drained = asyncio.run(main())
    assert pipeline.expired == 2 and drained == ["drained", "drained"]
    # The snapshot that could not open its new journal was tried, and counted as done so that
    # the next try is spaced by its cost instead of coming every tick.
    assert (journal.due, journal.done, journal.failed) == (2, 2, 2)  # spaced as failures
    failures = [r.getMessage() for r in caplog.records]
    assert failures == ["periodic expire failed; the daemon goes on",
                        "periodic _maybe_snapshot failed; the daemon goes on"]


def test_expiry_bills_every_closed_call_even_if_one_of_them_hits_a_bug() -> None:
    pipeline, billed, counters = pipeline_failing_on("stuck-2")
    t0 = 1_795_000_000_000_000
    for n in range(3):  # three answered calls whose BYE never comes
        call_id = f"stuck-{n}"
        start = t0 + n * 1_000_000
        invite = parse(request("INVITE", 1, call_id=call_id))
        ok = parse(response(200, 1, call_id=call_id))
        assert pipeline.tracker.feed(invite, start, UAC, UAS, None, None) == []
        assert pipeline.tracker.feed(ok, start + 2_000_000, UAS, UAC, None, None) == []
    assert len(pipeline.tracker) == 3
    assert pipeline.expire(t0 + 4 * 3600 * 1_000_000) == 3  # past max_duration (3 h)
    assert billed == ["stuck-0", "stuck-1"]
    assert counters.packets[("expire", INTERNAL_ERROR)] == 1
