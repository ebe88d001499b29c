"""Yield points for bulk builds that run beside a latency-sensitive thread.

A reload parses and indexes its decks in a worker thread while the event loop keeps reading
UDP. Under CPython's GIL the two share one core about evenly, so a loop that needs 80% of a
core to keep up with the traffic falls behind for the seconds a large deck takes, and the
kernel drops datagrams. The bulk loops of `rating` call `pace()` every few hundred rows; a
caller that wants to give way installs what that should do for its own thread with `pacing`
(vmgated sleeps a millisecond, which hands the GIL to the loop). Without `pacing`, `pace()` is
a no-op, so offline tools and tests build at full speed. Thread-local: pacing one thread
never slows another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["EVERY", "pace", "pacing"]

EVERY = 512  # rows between two yield points (~1–2 ms of parsing or indexing)

_local = threading.local()


def pace() -> None:
    """Give way as this thread's `pacing` says (nothing when none is installed)."""
    give_way: Callable[[], None] | None = getattr(_local, "give_way", None)
    if give_way is not None:
        give_way()


@contextmanager
def pacing(give_way: Callable[[], None]) -> Iterator[None]:
    """Within the block, every `pace()` on this thread calls `give_way`."""
    previous = getattr(_local, "give_way", None)
    _local.give_way = give_way
    try:
        yield
    finally:
        _local.give_way = previous
