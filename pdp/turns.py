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
import contextlib
import time
from collections.abc import Iterator

#: The longest a loop over a step holds the event loop between turns.
EVERY_S = 0.002
#: Items between looks at the clock, minus one (a mask): every 4th item.
_MASK = 3
#: The longest background work waits for calls in their answer path (see foreground()).
DEFER_MAX_S = 0.1

_foreground = 0  # calls inside foreground() right now


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Mark a call's answer path (a step: converting, deciding, building the response).
    The turns it gives are for other *calls*; background work that observes answers (the
    audit records of decisions already made, draft policies) waits until no answer is in
    progress, at most DEFER_MAX_S at a time, so a step's answer does not also carry the
    records of its own decisions, made in between its turns."""
    global _foreground
    _foreground += 1
    try:
        yield
    finally:
        _foreground -= 1


def answering() -> bool:
    """Whether some call is in its answer path (background work should wait)."""
    return _foreground > 0


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
