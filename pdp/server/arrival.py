"""When the call arrived: a decision's budget counts from here.

Why: a call can wait in the server before its servicer runs (a large request waits for its
turn in the bulk lane, lanes.py). The decision's deadline covers that wait too, so an answer
never comes later than the budget after the call arrived, and the decision's elapsed time
says what the caller waited. The unary stack (stack.py) marks the arrival; a call it did not
mark (a stream's batch, a servicer called directly) counts from when the servicer asks.
"""

from __future__ import annotations

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
