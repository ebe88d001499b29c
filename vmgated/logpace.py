"""Rate-limited logging: a fault that repeats on every datagram must not flood the journal.

Every place that logs something the traffic can repeat (drops, pipeline bugs, journal write
failures, a failing periodic step, a skewed capture clock) asks its `LogPace` first: the first
occurrence is logged at once, the next ones at most once per `every` seconds (per key, when
the place logs several independent things). The counts behind them live in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

LOG_EVERY = 10.0  # seconds between two log lines about the same thing


class LogPace:
    """When to log again: at most once per `every` seconds per key (monotonic clock)."""

    __slots__ = ("_last", "every")

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable = None) -> bool:
        """True (and the clock for `key` restarts) if nothing was logged for it lately."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        return True
