"""vmgated.heap: what freezing long-lived objects relies on, and the collector's pause clock.

`gc.freeze` is safe for the daemon only because the objects it freezes are freed by reference
counting when they are dropped: a reload drops the whole old `Runtime`, a finished call drops
its dialog. If either ever held a reference cycle, every reload would leak a rate deck and
every call its dialog, silently. These tests hold that: built, used, dropped with the
collector off, nothing is left for the collector to find.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from rating.deck import paused_gc
from sip import hep, message
from sip.capture import read_capture
from sip.dialog import Tracker
from vmgated.config import load_config
from vmgated.heap import THRESHOLDS, GcClock, freeze_long_lived, freeze_new, tune_collector
from vmgated.pipeline import Runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cycles_left() -> int:
    """Objects the collector finds unreachable (only cyclic garbage can be)."""
    return gc.collect()


def test_a_dropped_runtime_leaves_no_cycles(collector_off: None) -> None:
    runtime = Runtime.build(load_config(ROOT / "conf" / "vmgated.yaml"))
    call = runtime.rater.rate("442071234567", "acme-1", "gw-01", 1_795_000_000_000_000, 61)
    assert call.customer.rated
    del runtime, call
    assert cycles_left() == 0


def test_a_dropped_tracker_with_calls_leaves_no_cycles(collector_off: None) -> None:
    datagrams = read_capture((ROOT / "tests/data/kamailio_answered.hep").read_bytes())
    tracker = Tracker()
    records = []
    for d in datagrams:
        pkt = hep.decode(d.payload)
        msg = message.parse(pkt.payload)
        records += tracker.feed(msg, pkt.ts_us, pkt.src, pkt.dst, pkt.capture_id,
                                pkt.correlation_id)
    state = tracker.export_state()
    assert len(records) == 5
    restored = Tracker()
    restored.restore_state(state)
    del tracker, records, state, restored, pkt, msg
    assert cycles_left() == 0


def test_a_cycle_is_found_so_the_checks_above_can_fail(collector_off: None) -> None:
    loop: list[object] = []
    loop.append(loop)
    del loop
    assert cycles_left() == 1


def test_freeze_moves_live_objects_out_of_the_walks_and_refcounting_still_frees_them() -> None:
    kept = [object() for _ in range(1000)]
    try:
        frozen = freeze_long_lived()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert all(o is not kept for o in gc.get_objects())  # not walked any more
        del kept  # freed at once by its refcount, frozen or not
        assert gc.get_freeze_count() < frozen
    finally:
        gc.unfreeze()


def test_a_reload_builds_with_the_collector_paused_and_freezes_unwalked() -> None:
    clock = GcClock()
    clock.install()
    try:
        assert gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
            with paused_gc():  # nested (the deck parser pauses it too)
                pass
            assert not gc.isenabled()
            before = list(clock.seconds)
            built = [[n] for n in range(50_000)]  # far past the 700-allocation threshold
            frozen = freeze_new()
            assert clock.seconds == before  # nothing was walked to get there
        assert gc.isenabled()
        assert frozen >= len(built)
        assert all(o is not built for o in gc.get_objects())
    finally:
        clock.uninstall()
        gc.unfreeze()


def test_the_clock_times_each_collection_by_generation() -> None:
    clock = GcClock()
    clock.install()
    clock.install()  # idempotent
    try:
        assert gc.callbacks.count(clock) == 1
        garbage: list[list[object]] = [[] for _ in range(20_000)]
        for g in garbage:
            g.append(g)
        del garbage
        gc.collect(2)
        gc.collect(0)
        assert clock.seconds[2] > 0 and clock.seconds[0] > 0
        assert 0 < clock.longest <= sum(clock.seconds)
    finally:
        clock.uninstall()
    assert clock not in gc.callbacks
    before = list(clock.seconds)
    gc.collect()
    assert clock.seconds == before


def test_tune_collector_sets_the_daemon_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_collector()
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.set_threshold(*before)
