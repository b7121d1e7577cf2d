"""When the call arrived: a decision's budget counts from here.

Why: a call can wait in the server before its servicer runs (a large request waits for its
turn in the bulk lane, lanes.py). The decision's deadline covers that wait too, so an answer
never comes later than the budget after the call arrived, and the decision's elapsed time
says what the caller waited. The unary stack (stack.py) marks the arrival; a call it did not
mark (a stream's batch, a servicer called directly) counts from when the servicer asks.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

_ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("pdp_call_arrived",
                                                                        default=None)


def mark(at: float) -> contextvars.Token[float | None]:
    """The call in this task arrived at ``at`` (``time.monotonic()``)."""
    return _ARRIVED.set(at)


def unmark(token: contextvars.Token[float | None]) -> None:
    _ARRIVED.reset(token)


def arrived_at() -> float:
    """When the current call arrived (``time.monotonic()``); now, if nobody marked it."""
    at = _ARRIVED.get()
    return time.monotonic() if at is None else at


#: How often the watch notes that the event loop is running.
TICK_S = 0.005
#: A tick this late means the loop was held (one long callback, a pause of the process):
#: shorter delays are ordinary queueing, and a call's own wait is then close to now.
STALL_S = 0.02
#: Calls read this soon after the end of a stall was seen may have waited through it: gRPC
#: hands the loop the calls that came in meanwhile a few iterations after it runs again.
AFTER_S = 0.01


class StallWatch:
    """When the event loop was last seen running, so a call read after a stall counts its
    budget from the stall's start.

    Why: a call's servicer runs when the loop gets to it; a call that arrived while the
    loop was held (a long synchronous stretch, GC, the process stopped) would otherwise get
    its whole budget from the moment it is read, and could be answered -- allowed -- long
    after its deadline, with an elapsed time that hides the wait. The server cannot know
    when such a call arrived, only that it was not before the stall began: that is taken
    as its arrival (deny when unsure). A tick every TICK_S keeps the last sighting."""

    def __init__(self) -> None:
        self.last = 0.0  # time.monotonic() of the last tick; 0: not running
        self.stall = (0.0, 0.0)  # (start, when its end was seen) of the last stall
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self._handle is None:
            self._tick(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.last = 0.0

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if self.last and now - self.last > STALL_S:
            self.stall = (self.last + TICK_S, now)
        self.last = now
        self._handle = loop.call_later(TICK_S, self._tick, loop)

    def arrival(self, now: float) -> float:
        """The earliest a call read at ``now`` may have arrived: ``now``, unless the loop
        has not ticked for STALL_S (then when it stopped ticking), or a stall ended less
        than AFTER_S ago (then when that stall began)."""
        last = self.last
        if last and now - last > STALL_S:
            return last + TICK_S
        start, seen = self.stall
        if seen and now - seen <= AFTER_S:
            return start
        return now


#: The server's watch (one event loop per process).
WATCH = StallWatch()
