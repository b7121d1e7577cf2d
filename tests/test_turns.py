"""Long loops over a step's agents give the event loop turns: other calls run in between.

No timing is asserted: the turn interval is set to zero, so a loop gives a turn at every
fourth item, and a witness task counts how often it ran while the loop was in progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from pdp import turns
from pdp.counters import CounterKind, CounterRule, ManualClock
from pdp.counters.memory import MemoryCounterStore
from pdp.telemetry import log_step
from tests.support.wait import runs_meanwhile

T0 = 1_795_428_000.0


@pytest.fixture(autouse=True)
def every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turns, "EVERY_S", 0.0)


def test_turns_are_due_every_fourth_item_once_the_interval_passed() -> None:
    t = turns.Turns()
    assert [i for i in range(12) if t.due(i)] == [0, 4, 8]
    assert not turns.Turns(3600.0).due(0)


async def test_a_large_step_is_reserved_with_turns_and_no_cap_is_overshot() -> None:
    store = MemoryCounterStore(ManualClock(T0))
    cap = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=150)
    results, ran = await runs_meanwhile(store.reserve_batch(
        "t", [[cap] for _ in range(200)], timeout=5))
    assert ran >= 200 // 4 - 1
    assert sum(r.allowed for r in results) == 150


async def test_two_large_steps_interleave_and_still_share_the_cap() -> None:
    store = MemoryCounterStore(ManualClock(T0))
    cap = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=150)
    a, b = await asyncio.gather(store.reserve_batch("t", [[cap]] * 100, timeout=5),
                                store.reserve_batch("t", [[cap]] * 100, timeout=5))
    assert sum(r.allowed for r in a) + sum(r.allowed for r in b) == 150


@dataclass
class _Decision:
    decision_id: str
    allowed: bool
    reasons: list[Any] = field(default_factory=list)


class _Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def bind(self) -> _Logger:
        return self

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(event)

    debug = info


async def test_a_step_is_logged_with_turns() -> None:
    logger = _Logger()
    decisions = [_Decision(f"d{i}", i % 2 == 0) for i in range(400)]
    (allowed, denied), ran = await runs_meanwhile(log_step(logger, "t", "push", decisions))
    assert (allowed, denied) == (200, 200)
    assert ran >= 400 // 4 - 1
    assert logger.lines.count("decision_denied") == 200 and logger.lines[-1] == "step"


# -- one long call, sliced ----------------------------------------------------------------

def _spin(checks: int) -> int:
    """Synchronous work that reads the clock ``checks`` times, as an evaluation does."""
    for _ in range(checks):
        turns.clock()
    return checks


async def test_a_sliced_call_gives_the_loop_turns_at_its_clock_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turns, "SLICE_S", 0.0)  # every clock check past its slice: a turn
    result, ran = await runs_meanwhile(turns.sliced(_spin, 50, slice_s=0.0))
    assert result == 50
    assert ran >= 40, ran  # ~one turn per check; unsliced, the witness would not run at all
    _, unsliced = await runs_meanwhile(_async(_spin, 50))
    assert unsliced <= 1, unsliced


async def _async(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def test_a_sliced_call_that_fits_in_its_slice_gives_no_turn() -> None:
    result, ran = await runs_meanwhile(turns.sliced(_spin, 3, slice_s=3600.0))
    assert result == 3 and ran <= 1, ran


async def test_a_sliced_call_raises_what_the_call_raised() -> None:
    def fails() -> None:
        turns.clock()
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await turns.sliced(fails, slice_s=0.0)
    assert await turns.sliced(_spin, 2, slice_s=0.0) == 2  # the worker is still usable


async def test_a_cancelled_sliced_call_is_unwound_where_it_paused() -> None:
    unwound: list[str] = []

    def long_call() -> None:
        try:
            while True:
                turns.clock()
        finally:
            unwound.append("finally")

    task = asyncio.create_task(turns.sliced(long_call, slice_s=0.0))
    for _ in range(5):
        await asyncio.sleep(0)  # it is paused between slices now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == ["finally"]


async def test_sliced_calls_interleave_and_each_keeps_its_own_state() -> None:
    order: list[str] = []

    def count(name: str, n: int) -> str:
        for i in range(n):
            order.append(f"{name}{i}")
            turns.clock()
        return name

    a, b = await asyncio.gather(turns.sliced(count, "a", 3, slice_s=0.0),
                                turns.sliced(count, "b", 3, slice_s=0.0))
    assert (a, b) == ("a", "b")
    assert sorted(order) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert order.index("b0") < order.index("a2")  # b ran while a was paused


async def test_a_sliced_call_sees_the_callers_context_variables() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    assert await turns.sliced(var.get, slice_s=0.0) == "caller's"


def test_the_clock_outside_a_sliced_call_gives_no_turn() -> None:
    turns._slice_end = 0.0  # as if a slice were over: no worker greenlet, so no switch
    try:
        assert turns.clock() > 0
    finally:
        turns._slice_end = float("inf")


async def test_slices_shrink_when_many_sliced_calls_run_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A round of all running sliced calls stays near ROUND_S: each one's slice is its
    share of it (never under MIN_SLICE_S, never over the slice asked for)."""
    asked: list[float] = []
    real = turns.Sliced.step

    def step(self: turns.Sliced, slice_s: float = turns.SLICE_S) -> bool:
        asked.append(slice_s)
        return real(self, slice_s)

    monkeypatch.setattr(turns.Sliced, "step", step)
    await turns.sliced(_spin, 1)
    assert asked == [turns.SLICE_S]
    asked.clear()
    started = 0

    def until_all_started() -> None:
        nonlocal started
        started += 1
        while started < 40:
            turns.clock()

    await asyncio.gather(*(turns.sliced(until_all_started) for _ in range(40)))
    assert min(asked) == turns.MIN_SLICE_S and max(asked) <= turns.SLICE_S


async def test_a_call_on_its_own_time_does_not_count_its_pauses() -> None:
    """A draft's budget is of its own running time: the clock inside it leaves out the
    time other calls ran while it was paused; a live call's clock is the wall clock."""
    import time

    started: list[bool] = []

    def pauses() -> float:
        t0 = turns.clock()
        started.append(True)
        for _ in range(5):
            turns.clock()  # past its (zero) slice: a turn, in which the other task runs
        return turns.clock() - t0

    async def busy() -> None:
        while not started:
            await asyncio.sleep(0)
        t = time.monotonic()
        while time.monotonic() - t < 0.1:  # not-a-wait: CPU held while the call is paused
            pass

    own, _ = await asyncio.gather(turns.sliced(pauses, slice_s=0.0, own_time=True), busy())
    started.clear()
    wall, _ = await asyncio.gather(turns.sliced(pauses, slice_s=0.0), busy())
    assert own < 0.1 <= wall


async def test_a_program_started_after_a_pause_runs_on_its_own_time() -> None:
    """A draft's second expression (after a variable it paused in) starts on the draft's
    own clock: its budget has time left even though the wall clock passed its deadline."""
    import time

    from pdp.cel import Budget, pdp_environment

    prog = pdp_environment().compile("1 + 1 == 2")

    def draft(budget: Budget) -> bool:
        turns.clock()  # a pause: the other task holds the loop past the budget's deadline
        return bool(prog.evaluate({}, budget))

    async def busy() -> None:
        await asyncio.sleep(0)
        t = time.monotonic()
        while time.monotonic() - t < 0.1:  # not-a-wait: CPU held while the draft is paused
            pass

    budget = Budget(deadline=time.monotonic() + 0.05, cost_limit=1000)
    ok, _ = await asyncio.gather(turns.sliced(draft, budget, slice_s=0.0, own_time=True),
                                 busy())
    assert ok is True


async def test_a_turn_of_the_loop_runs_only_a_few_slices(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Many sliced calls at once: each turn of the event loop lets through only as many
    slices as fit in TURN_SLICES_S, first come first served, so the loop keeps turning
    (gRPC takes in new calls once a turn) instead of running every call's slice in each."""
    events: list[str] = []
    real = turns.Sliced.step

    def step(self: turns.Sliced, slice_s: float = turns.SLICE_S) -> bool:
        events.append("slice")
        return real(self, slice_s)

    monkeypatch.setattr(turns.Sliced, "step", step)
    monkeypatch.setattr(turns, "TURN_SLICES_S", 3 * turns.MIN_SLICE_S)  # 3 slices a turn
    stop = False

    def spin() -> None:
        while not stop:
            turns.clock()

    async def ticker() -> None:
        nonlocal stop
        while events.count("slice") < 40 * 6:  # every call has had a few slices
            events.append("turn")
            await asyncio.sleep(0)
        stop = True
        events.append("end")

    await asyncio.gather(ticker(), *(turns.sliced(spin) for _ in range(40)))
    watched = events[:events.index("end")]  # then the calls end, the ticker gone
    runs = "".join("s" if e == "slice" else "|" for e in watched).split("|")
    first = next(i for i, r in enumerate(runs) if r)  # every call's first slice, at once
    assert len(runs[first]) == 40
    assert max(len(r) for r in runs[first + 1:]) <= 3
