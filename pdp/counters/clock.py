"""Clocks: the memory store reads one, the Redis store uses one only to prepare day tables.

Injected so tests can move time (``ManualClock``) and simulate skewed sidecars.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    """The machine's wall clock, optionally shifted (to simulate a skewed sidecar)."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self.offset_seconds = offset_seconds

    def now(self) -> float:
        return time.time() + self.offset_seconds


class ManualClock:
    """A clock that only moves when told to: deterministic tests of windows and days."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        with self._lock:
            self._t = float(t)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds
