"""Giving the event loop a turn inside long loops over a step's agents.

Why: pdp answers every call on one event loop, so a loop over a 1 000-agent step (converting
it, reserving its counters, writing its log lines, building its response) holds every other
call (a health check, another tenant's unary decision) for as long as it runs: tens of
milliseconds on a slow machine, past the deadline the others are promised. A ``Turns`` is
asked at each item; every ``every_s`` it lets the loop run whatever is ready, so the longest
hold is one slice, whatever the step's size or the machine's speed.
"""

from __future__ import annotations

import asyncio
import time

#: The longest a loop over a step holds the event loop between turns.
EVERY_S = 0.002
#: Items between looks at the clock, minus one (a mask): every 4th item.
_MASK = 3


class Turns:
    """In a loop: ``if turns.due(i): await turns.take()`` (``i`` the item's index); the
    check is a bit test on most items and a clock read on every 4th."""

    __slots__ = ("every_s", "last", "taken")

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = EVERY_S if every_s is None else every_s
        self.last = time.monotonic()
        self.taken = 0  # turns given, for tests

    def due(self, i: int) -> bool:
        return not i & _MASK and time.monotonic() - self.last >= self.every_s

    async def take(self) -> None:
        await asyncio.sleep(0)
        self.taken += 1
        self.last = time.monotonic()
