"""Budget: cost limits, deadlines inside comprehension loops, static cost ceiling, RE2."""

from __future__ import annotations

import time

import pytest

from pdp.cel import (
    Budget,
    BudgetExceeded,
    CelCompileError,
    CostLimitExceeded,
    DeadlineExceeded,
    pdp_environment,
)

BIG = {"config": {"items": list(range(3_000_000))}}


def test_deadline_stops_runaway_loop() -> None:
    """3M x 3M steps would run for days: that it raises at all shows the deadline is checked
    inside the loop (the test's own timeout is the bound; how soon after the deadline it
    stops is measured in bench/, not asserted here)."""
    prog = pdp_environment().compile(
        "config.items.all(i, config.items.exists(j, j == -1) || true)")
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(BIG, budget=Budget(deadline=time.monotonic() + 0.02))


def test_cost_limit_is_distinct_from_deadline() -> None:
    prog = pdp_environment().compile("config.items.exists(j, j == -1)")
    with pytest.raises(CostLimitExceeded) as ei:
        prog.evaluate(BIG, budget=Budget(cost_limit=1000))
    assert not isinstance(ei.value, DeadlineExceeded)
    assert isinstance(ei.value, BudgetExceeded)


def test_budget_errors_are_not_absorbed_by_logical_operators() -> None:
    prog = pdp_environment().compile("config.items.exists(j, j == -1) || true")
    with pytest.raises(CostLimitExceeded):
        prog.evaluate(BIG, budget=Budget(cost_limit=10))


def test_cost_accumulates_across_evaluations_sharing_a_budget() -> None:
    prog = pdp_environment().compile("config.items.exists(j, j == 5)")
    act = {"config": {"items": list(range(10))}}
    # every node is charged: 3 at entry (exists, config.items), 1 + 3 per iteration (6 run)
    b = Budget(cost_limit=40)
    assert prog.evaluate(act, budget=b) is True
    assert b.cost == 3 + 6 * 4
    with pytest.raises(CostLimitExceeded):
        prog.evaluate(act, budget=b)
        prog.evaluate(act, budget=b)


def test_deadline_already_passed() -> None:
    prog = pdp_environment().compile("1 + 1 == 2")
    with pytest.raises(DeadlineExceeded):
        prog.evaluate({}, budget=Budget(deadline=time.monotonic() - 1))


def test_within_budget_succeeds() -> None:
    prog = pdp_environment().compile("config.items.filter(x, x % 2 == 0).size()")
    b = Budget(deadline=time.monotonic() + 5, cost_limit=1000)
    assert prog.evaluate({"config": {"items": list(range(100))}}, budget=b) == 50


def test_static_cost_ceiling_rejects_at_admission() -> None:
    env = pdp_environment()
    nested = "config.a.all(x, config.b.all(y, config.c.all(z, x + y + z > 0)))"
    prog = env.compile(nested)
    assert prog.cost_estimate >= 1000**3
    with pytest.raises(CelCompileError, match="cost"):
        env.compile(nested, max_cost=1_000_000)
    assert env.compile("config.a.all(x, x > 0)", max_cost=1_000_000).cost_estimate <= 1_000_000


def test_costly_builtins_charge_by_size() -> None:
    prog = pdp_environment().compile('config.s.matches("b+")')
    act = {"config": {"s": "a" * 100_000}}
    with pytest.raises(CostLimitExceeded):
        prog.evaluate(act, budget=Budget(cost_limit=100))
    assert prog.evaluate(act, budget=Budget(cost_limit=100_000)) is False


def test_redos_pattern_is_linear() -> None:
    prog = pdp_environment().compile('config.s.matches("^(a+)+$")')
    # a backtracking engine would not finish within the test's timeout; RE2 answers
    assert prog.evaluate({"config": {"s": "a" * 200_000 + "!"}}) is False
