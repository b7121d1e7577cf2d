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
