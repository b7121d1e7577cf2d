"""Large requests take turns, behind the small ones.

Why: one event loop serves every call, in the order their work became ready. A request of
hundreds of kilobytes costs the loop about twice what an ordinary decision costs (the bytes
are copied, decoded, converted and hashed), and callers sending such requests flat out kept
two or three of them in the loop's queue at any moment: every step of an ordinary call
then waited behind them (bench/README.md, "Tenth pass"). The bulk lane lets one large
request (``large_bytes`` or more on the wire) be worked on at a time; the others wait
outside the loop's queue, not in it. The request is decoded only once it has its turn
(stack.py), after a turn of the loop for small calls already waiting.

The wait is bounded: a request that has not had its turn within ``max_wait_s`` (a quarter
of the decision deadline, ``LANE_WAIT_SHARE``) goes on without it, as every request did
before the lane, with the rest of its budget: a step that holds the turn for long (a
thousand agents, a slow policy) delays another large request by that much at most, and a
flood of large requests is no worse off than without the lane. The budget counts from the
call's arrival (arrival.py), so the wait is inside the deadline, not added to it.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: The longest wait for a turn, as a share of the decision deadline.
LANE_WAIT_SHARE = 0.25
#: Requests at least this long on the wire take turns (``--bulk-lane-bytes``; sweep.py's
#: LARGE_BYTES is the same size: where the bytes, not the allocation count, matter).
LARGE_BYTES = 64 << 10


class BulkLane:
    """One large request at a time; the others wait their turn, first come first served."""

    __slots__ = ("_busy", "_waiters", "large_bytes", "max_wait_s", "timed_out", "waited")

    def __init__(self, max_wait_s: float, large_bytes: int = LARGE_BYTES) -> None:
        self.large_bytes = large_bytes
        self.max_wait_s = max_wait_s
        self._busy = False
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self.waited = 0  # requests that had to wait for their turn
        self.timed_out = 0  # requests that went on without it

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def enter(self, limit_s: float | None = None) -> bool:
        """Wait for the turn, at most ``max_wait_s`` (or ``limit_s`` when shorter). True:
        the caller has the turn and must :meth:`leave`; False: it goes on without it."""
        if not self._busy:
            self._busy = True
            return True
        self.waited += 1
        wait_s = self.max_wait_s if limit_s is None else min(limit_s, self.max_wait_s)
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(turn)
        timer = loop.call_later(max(0.0, wait_s), _expire, turn)
        try:
            got = await turn
        except asyncio.CancelledError:
            # handed the turn just before the call was cancelled: pass it on
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave()
            raise
        finally:
            timer.cancel()
        if not got:
            self.timed_out += 1
        return got

    def leave(self) -> None:
        """Hand the turn to the next request still waiting, or free the lane."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(True)
                return
        self._busy = False


def _expire(turn: asyncio.Future[bool]) -> None:
    if not turn.done():
        turn.set_result(False)
