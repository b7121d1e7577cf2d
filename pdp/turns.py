"""Giving the event loop a turn inside long loops over a step's agents, and inside one long
evaluation.

Why: pdp answers every call on one event loop, so a loop over a 1 000-agent step (converting
it, reserving its counters, writing its log lines, building its response) holds every other
call (a health check, another tenant's unary decision) for as long as it runs: tens of
milliseconds on a slow machine, past the deadline the others are promised. A ``Turns`` is
asked at each item; every ``every_s`` it lets the loop run whatever is ready, so the longest
hold is one slice, whatever the step's size or the machine's speed.

One policy evaluation is synchronous code (generated Python) that may run until its deadline:
a hostile policy on a fresh input holds the loop for the whole 50 ms. ``sliced`` runs such
work in a greenlet; the evaluator's clock checks (``clock``, read every few hundred cost
units) hand the loop a turn once SLICE_S has passed, and the work resumes where it was.
The bound is structural: every place that can run long already reads the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import greenlet

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


# -- one long evaluation ------------------------------------------------------------------

#: The longest a sliced call holds the event loop between turns.
SLICE_S = 0.001
#: With many sliced calls at once, slices shrink so that a round of all of them stays near
#: this (a call whose deadline passed while it waited notices at its next turn: the wait
#: for that turn is its overshoot), down to MIN_SLICE_S.
ROUND_S = 0.004
MIN_SLICE_S = 0.0002
_running = 0  # sliced calls started and not yet ended
#: Idle worker greenlets kept per thread for reuse (a new one costs ~5 us, a switch ~0.5 us).
_IDLE_WORKERS = 8

_R = TypeVar("_R")
_TURN = object()  # what a worker hands its driver when it gives up a turn
_monotonic = time.monotonic
_slice_end = math.inf  # when the running slice is over (inf: no sliced call is running)
_paused = 0.0  # the running sliced call's time spent paused, when it runs on its own time


class _Worker(greenlet.greenlet):
    """A greenlet that runs sliced calls one after another (see ``_work``)."""


_idle = threading.local()


def clock() -> float:
    """``time.monotonic()``, and a turn for the event loop when the running sliced call's
    slice is over. Code that checks a deadline reads this instead of the time, so a long
    evaluation pauses at a point where it is consistent, never in between."""
    t = _monotonic()
    if t > _slice_end:
        g = greenlet.getcurrent()
        if type(g) is _Worker:
            assert g.parent is not None
            g.parent.switch(_TURN)
            t = _monotonic()
    return t - _paused


def _work(item: tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context]) -> None:
    """A worker's body: run each call it is handed, in the caller's context; hand back
    (ok, result or exception) and wait for the next. GreenletExit (``Sliced.close``) ends
    it."""
    while True:
        fn, args, ctx = item
        out: tuple[bool, Any]
        try:
            out = (True, ctx.run(fn, *args))
        except greenlet.GreenletExit:
            raise
        except BaseException as exc:  # handed to the driver, which raises it
            out = (False, exc)
        parent = greenlet.getcurrent().parent
        assert parent is not None
        item = parent.switch(out)


class Sliced:
    """One synchronous call run a slice at a time: ``step()`` runs it until it is done
    (True) or its slice is over (False); then ``result()``. ``close()`` unwinds a call
    that will not be resumed."""

    __slots__ = ("_g", "_item", "_out", "_own_time", "_paused", "_paused_at")

    def __init__(self, fn: Callable[..., Any], *args: Any, own_time: bool = False) -> None:
        pool: list[_Worker] | None = getattr(_idle, "workers", None)
        if pool is None:
            pool = _idle.workers = []
        self._g: _Worker | None = pool.pop() if pool else _Worker(_work)
        self._item: Any = (fn, args, contextvars.copy_context())
        self._out: tuple[bool, Any] | None = None
        # own_time: the call's clock (``clock()`` inside it) leaves out its pauses, so a
        # budget it checks is of its own running time, not of everybody's in between.
        self._own_time = own_time
        self._paused = 0.0
        self._paused_at = 0.0

    def step(self, slice_s: float = SLICE_S) -> bool:
        global _slice_end, _paused
        g = self._g
        assert g is not None, "step() after the call ended"
        now = _monotonic()
        if self._paused_at:
            self._paused += now - self._paused_at
        _slice_end = now + slice_s
        _paused = self._paused if self._own_time else 0.0
        try:
            if self._item is not None:
                item, self._item = self._item, None
                out = g.switch(item)
            else:
                out = g.switch()
        finally:
            _slice_end = math.inf
            _paused = 0.0
        if out is _TURN:
            self._paused_at = _monotonic()
            return False
        self._out = out
        self._g = None
        pool: list[_Worker] = _idle.workers
        if len(pool) < _IDLE_WORKERS and not g.dead:
            pool.append(g)
        return True

    def result(self) -> Any:
        assert self._out is not None, "result() before the call ended"
        ok, value = self._out
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Unwind a call that was started and will not be resumed (its caller went away):
        GreenletExit is raised where it paused, with no more turns given."""
        g, self._g = self._g, None
        if g is not None and self._item is None and not g.dead:
            g.throw()


#: The most time the slices of sliced calls take together in one turn of the event loop.
#: gRPC takes in new calls about once per turn: with a hundred slow calls each running a
#: slice every turn, a turn lasted 20 ms and new calls waited that long each, unseen by
#: their budgets. Sliced calls waiting for their next slice queue up instead (``_Queue``).
TURN_SLICES_S = 0.001


class _Queue:
    """Sliced calls waiting for their next slice, first come first served: each turn of
    the event loop lets as many go as fit in TURN_SLICES_S."""

    def __init__(self) -> None:
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.handle: asyncio.Handle | None = None
        self.per_turn = 1

    def wait(self, loop: asyncio.AbstractEventLoop, slice_s: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = loop.create_future()
        self.waiting.append(fut)
        self.per_turn = max(1, int(TURN_SLICES_S / slice_s)) if slice_s > 0 else 1 << 30
        if self.handle is None:
            self.handle = loop.call_soon(self._release, loop)
        return fut

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = None
        n = self.per_turn
        while n and self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():  # a cancelled caller's place is skipped
                fut.set_result(None)
                n -= 1
        if self.waiting:
            self.handle = loop.call_soon(self._release, loop)


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
    weakref.WeakKeyDictionary())


def _queue(loop: asyncio.AbstractEventLoop) -> _Queue:
    q = _queues.get(loop)
    if q is None:
        q = _queues[loop] = _Queue()
    return q


async def sliced(fn: Callable[..., _R], *args: Any, slice_s: float = SLICE_S,
                 own_time: bool = False) -> _R:
    """``fn(*args)``, giving the event loop a turn whenever a slice of ``slice_s`` is over
    at one of its clock checks (``clock``). Exceptions propagate; if this coroutine is
    cancelled meanwhile, the call is unwound. ``own_time``: see ``Sliced``. The first
    slice runs at once (most calls end in it); later ones wait their turn (``_Queue``)."""
    global _running
    run = Sliced(fn, *args, own_time=own_time)
    _running += 1

    def share() -> float:  # this call's slice, with _running calls sharing the rounds
        return min(slice_s, max(MIN_SLICE_S, ROUND_S / _running))

    try:
        while not run.step(share()):
            loop = asyncio.get_running_loop()
            await _queue(loop).wait(loop, share())
    except BaseException:
        run.close()
        raise
    finally:
        _running -= 1
    result: _R = run.result()
    return result
