"""The process heap: keeping CPython's cycle collector off the long-lived objects, and
handing freed C memory back to the kernel.

Why the cycle collector matters here: a 100,000-prefix rate deck is ~440,000 tracked objects
per plan (rows, tariffs, timeline tuples), and a tenant with three such plans holds 1.3
million. Every full (generation 2) collection walks all of them on the event loop: 96 ms for
one such plan, 276 ms for three (`bench/gc_pause.py` on the 2-core sandbox), during which
nothing reads the UDP socket: ~8,300 datagrams waiting in the kernel at 30,000 packets/s.

What is done about it: once the daemon has loaded its config and recovered its state, and
again after each reload, everything alive is moved to the collector's permanent generation
(`gc.freeze`), which collections never walk. Frozen objects are still freed by reference
counting as soon as nothing refers to them (the old rater after a reload, a restored dialog
when its call ends); only *cyclic* garbage among them would never be collected. Checked by
tests/unit/test_heap.py: a dropped `Runtime` (config, rater, attributor) and a dropped
`Tracker` leave no cycles.

At start-up (before any datagram is read) a full collection runs first, so no garbage is
frozen. A reload happens under traffic, where that collection would itself be the stall (the
new decks are young objects: 276 ms for three 100,000-prefix plans), so a reload builds with
the collector paused (`rating.deck.paused_gc`, the same pause the deck parser takes) and
freezes the result unwalked (`freeze_new`). What else is frozen with it is what the live
traffic made meanwhile; its cyclic garbage, the only part that could leak, was ~600 objects in
20 s at 25,000 packets/s (measured with `gc.get_stats()`), so a reload leaks at most a few
hundred small objects.

The collector's thresholds are raised too (`tune_collector`, `THRESHOLDS`). CPython's defaults
(700, 10, 10) collect the youngest generation every 700 net allocations of containers; the
per-packet path allocates dozens (message tuples, dialog state, rated legs, ledger rows), so at
35,000 packets/s the defaults ran ~1,000 young collections a second plus a full collection
every 1–2 s over the calls in progress: 1.0 s of a 15 s run in the collector, 8–12 full
collections, pauses up to 93 ms (bench/e2e.py, 2026-11-23). With (20,000, 20, 100): 0.12–0.15 s,
no full collection during the run, longest pause 24–27 ms. Almost everything the path
allocates dies by reference count within a packet or a call, so waiting longer between
collections costs little memory: only cyclic garbage waits, and the daemon makes little.

`GcClock` measures each collection's pause (gc.callbacks) for /metrics, so an operator who
sees kernel drops can tell a collector stall from an overload.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from typing import Any

__all__ = [
    "THRESHOLDS",
    "GcClock",
    "freeze_long_lived",
    "freeze_new",
    "release_free_heap",
    "tune_collector",
]

THRESHOLDS = (20_000, 20, 100)
"""gc.set_threshold for the daemon: young collections every 20,000 net container allocations,
the middle generation every 20 of those, a full collection every 100 of those (and only when
the objects that survived into the old generation since the last one are a quarter of it)."""


def tune_collector() -> None:
    """Collect less often than CPython's defaults, for a process that allocates per packet."""
    gc.set_threshold(*THRESHOLDS)


def freeze_long_lived() -> int:
    """Collect once, then move every surviving object out of the collector's sight.

    Returns the number of objects now frozen (for the log line).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def freeze_new() -> int:
    """Freeze everything alive now without walking it first; returns the frozen count."""
    gc.freeze()
    return gc.get_freeze_count()


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc `malloc_trim`), if there is one.

    Recovery parses hundreds of thousands of journalled datagrams whose payloads (> 512 bytes,
    so outside Python's small-object allocator) are malloc'ed and freed between the tracker's
    long-lived objects; glibc keeps those holes mapped. Measured with bench/active.py
    --restart kill-busy: see bench/README.md "Active calls". A no-op where libc has no
    malloc_trim (musl, macOS).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class GcClock:
    """Time spent in cycle collections per generation, and the longest single pause."""

    __slots__ = ("_started", "longest", "seconds")

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """The gc.callbacks hook: called at the start and the stop of each collection."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        if 0 <= generation <= 2:
            self.seconds[generation] += pause
        if pause > self.longest:
            self.longest = pause

    def install(self) -> None:
        """Start measuring (idempotent)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop measuring."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
