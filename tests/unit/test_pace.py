"""rating.pace: the yield points of bulk builds, who they call (only the pacing thread), and
what vmgated's reload worker does there (waits while datagrams queue up in the kernel)."""

from __future__ import annotations

import threading
import time

from rating.deck import HEADER, parse_deck
from rating.index import PrefixIndex
from rating.lock import check_plan_edit
from rating.model import RatePlan, Scope
from rating.pace import EVERY, pace, pacing
from vmgated import app


def deck(rows: int) -> str:
    lines = [HEADER] + [f"44{n:06d},UK {n},2026-01-01,,0.0100,,60,60" for n in range(rows)]
    return "\n".join(lines) + "\n"


def test_pace_does_nothing_without_pacing_and_calls_the_installed_function() -> None:
    calls: list[str] = []
    pace()  # no pacing installed: a no-op
    with pacing(lambda: calls.append("outer")):
        pace()
        with pacing(lambda: calls.append("inner")):
            pace()
        pace()  # the outer one again
    pace()
    assert calls == ["outer", "inner", "outer"]


def test_pacing_is_per_thread() -> None:
    calls: list[str] = []
    seen_elsewhere: list[int] = []

    def other() -> None:
        before = len(calls)
        pace()
        seen_elsewhere.append(len(calls) - before)

    with pacing(lambda: calls.append(threading.current_thread().name)):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        pace()
    assert seen_elsewhere == [0] and calls == [threading.main_thread().name]


def test_deck_parsing_indexing_and_the_plan_lock_give_way_every_few_hundred_rows() -> None:
    rows = 5 * EVERY
    counts = {"parse": 0, "index": 0, "lock": 0}
    stage = "parse"

    def count() -> None:
        counts[stage] += 1

    with pacing(count):
        dests = parse_deck(deck(rows), "big.csv")
        stage = "index"
        plan = RatePlan("p", Scope.CUSTOMER, "USD", dests)
        index = PrefixIndex.build(plan)
        stage = "lock"
        used = {("p", d.code, d.valid_since) for d in dests[:3]}
        assert check_plan_edit(plan, plan, used) == []
    assert len(dests) == rows and len(index) == rows
    # One yield point per EVERY rows in each pass (the index makes three passes).
    assert counts["parse"] >= rows // EVERY - 1
    assert counts["index"] >= 3 * (rows // EVERY) - 3
    assert counts["lock"] >= 2 * (rows // EVERY) - 2


def test_the_reload_worker_waits_while_datagrams_queue_up_and_not_longer() -> None:
    queue = [10 * app.QUEUED_MAX, 2 * app.QUEUED_MAX, 0]
    reads: list[int] = []

    def queued() -> int:
        reads.append(queue[0])
        return queue.pop(0) if len(queue) > 1 else queue[0]

    t = time.monotonic()
    app._give_way(queued)
    assert reads == [10 * app.QUEUED_MAX, 2 * app.QUEUED_MAX, 0]  # waited twice, then went on
    assert time.monotonic() - t >= 2 * app.GIVE_WAY_S

    t = time.monotonic()
    app._give_way(lambda: 10 * app.QUEUED_MAX)  # overloaded for good: bounded wait
    waited = time.monotonic() - t
    assert app.WAIT_MAX_S <= waited < app.WAIT_MAX_S + 0.5  # bounded (margin: a busy CI box)

    t = time.monotonic()
    app._give_way(lambda: 0)  # idle: no wait at all
    assert time.monotonic() - t < app.GIVE_WAY_S
