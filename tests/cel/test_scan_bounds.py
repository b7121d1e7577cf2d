"""Second adversarial round on the cost model: scans and Python-speed loops charge before
they run and read the clock as they go.

No test here measures time: a budget whose ``deadline_at`` is already past (-1) shows
whether the clock is read at a given point at all; charges are read from ``Budget.cost``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pdp.cel import Budget, DeadlineExceeded, pdp_environment

ENV = pdp_environment()
UNLIMITED = 10**12


def cfg(**kw: Any) -> dict[str, Any]:
    return {"config": kw}


def cost(src: str, act: dict[str, Any]) -> int:
    b = Budget(cost_limit=UNLIMITED)
    ENV.compile(src).evaluate(act, b)
    return b.cost


def past_deadline() -> Budget:
    """A budget whose deadline the generated code sees as passed (the real one is far)."""
    b = Budget(deadline=time.monotonic() + 3600, cost_limit=UNLIMITED)
    b.deadline_at = -1.0
    return b


# -- x in list ------------------------------------------------------------------------------

def test_a_scan_charge_in_a_loop_reads_the_clock_when_it_crosses_a_check_point() -> None:
    """Two iterations whose ticks never cross a clock check point: the scan's own charge
    (16 384 elements: 256 units) does. Before, only the constant tick could trigger the
    clock, so a loop of costly scans read it once in ~50 iterations (17 ms late)."""
    prog = ENV.compile("config.l.all(x, x in config.big)")
    act = cfg(l=[0, 0], big=[0] * 16_384)
    assert prog.evaluate(act, Budget(cost_limit=UNLIMITED)) is True
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(act, past_deadline())


def test_a_membership_test_outside_loops_is_charged_by_the_list() -> None:
    small = cost("-1 in config.l", cfg(l=[0] * 10))
    big = cost("-1 in config.l", cfg(l=[0] * 100_000))
    assert big - small >= 100_000 // 64
    # a map is one key test, whatever its size
    assert cost("-1 in config.m", cfg(m={str(i): i for i in range(100_000)})) == small


def test_a_long_scalar_scan_reads_the_clock() -> None:
    """A scan of 10 000 numbers is charged 156 units (no check point crossed): the scan
    itself reads the clock between slices."""
    prog = ENV.compile("-1 in config.l")
    act = cfg(l=list(range(10_000)))
    assert prog.evaluate(act, Budget(cost_limit=UNLIMITED)) is False
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(act, past_deadline())


@pytest.mark.parametrize("src,expected", [
    ("1 in config.bools", False),      # true is not the number 1 in CEL
    ("1 in config.floats", True),      # 1 == 1.0
    ("1u in config.floats", True),
    ("2.0 in config.ints", True),
    ("config.nan in config.nans", False),  # NaN equals nothing
    ("3 in config.ints", False),
    ("config.ints[9999] in config.ints", True),
])
def test_membership_keeps_cel_equality(src: str, expected: bool) -> None:
    act = cfg(bools=[True] * 9000, floats=[0.5] * 9000 + [1.0], ints=[2] * 10_000,
              nan=float("nan"), nans=[float("nan")] * 9000)
    assert ENV.compile(src).evaluate(act, Budget(cost_limit=UNLIMITED)) is expected


def test_contains_of_a_literal_is_charged_by_the_receiver() -> None:
    small = cost('config.s.contains("b")', cfg(s="a"))
    assert cost('config.s.contains("b")', cfg(s="a" * 640_000)) - small >= 10_000
