"""A step's one budget: a hiccup in one agent does not deny it, a slow agent does not
starve the others, and nothing outlives the step."""

from __future__ import annotations

import pytest

from pdp.engine.budget import RESERVE_SHARE, StepBudget
from pdp.engine.deadline import Deadline


def test_an_agent_may_use_more_than_an_equal_share_but_leaves_each_later_one_its_reserve(
        ) -> None:
    t0 = 1000.0
    b = StepBudget.start(1000, 0.05, 1.0, 0.1, None, t0, agent_max_s=0.02)
    equal = (b.eval_end - t0) / 1000
    first = b.share(0, t0).expires_at
    # Not an equal share (under a millisecond): a GC pause in the first agent is no deny.
    assert first - t0 == pytest.approx(0.02)
    assert first - t0 > 10 * equal
    # A slow first half: what is left still gives every later agent its reserve.
    late = t0 + 0.8
    d = b.share(500, late).expires_at
    assert d <= b.eval_end - 499 * b.reserve_s
    assert b.reserve_s == pytest.approx(equal * RESERVE_SHARE)
    assert b.share(999, b.eval_end - 0.001).expires_at == b.eval_end


def test_a_single_decision_has_its_whole_budget_and_the_caller_caps_a_step() -> None:
    t0 = 50.0
    one = StepBudget.start(1, 0.05, 1.0, 0.1, None, t0)
    assert one.share(0, t0).expires_at == pytest.approx(t0 + 0.05)
    capped = StepBudget.start(100, 0.05, 1.0, 0.1, Deadline(t0 + 0.2), t0)
    assert capped.step.expires_at == pytest.approx(t0 + 0.2)
    assert all(capped.share(i, t0).expires_at <= capped.eval_end for i in range(100))


def test_in_a_small_step_an_agent_may_take_what_a_single_push_would() -> None:
    """The per-agent cap protects large steps; in a small one (an equal share above the
    cap) an agent gets its share, up to one decision's budget, so a pause of the machine in
    one agent does not deny it while most of the step's time is left."""
    t0 = 10.0
    small = StepBudget.start(4, 0.05, 1.0, 0.1, None, t0, agent_max_s=0.02)
    assert small.per_agent_s == pytest.approx(0.05)
    assert small.share(0, t0).expires_at - t0 == pytest.approx(0.05)
    middle = StepBudget.start(40, 0.05, 1.0, 0.1, None, t0, agent_max_s=0.02)
    assert 0.02 < middle.per_agent_s < 0.05  # its equal share
    large = StepBudget.start(1000, 0.05, 1.0, 0.1, None, t0, agent_max_s=0.02)
    assert large.per_agent_s == pytest.approx(0.02)
