"""One budget for a decision or a whole step, shared fairly by the step's agents.

A single decision has ``budget_s`` from the moment its call arrived. A step has one budget
for all its agents (``step_budget_s``, never past the caller's own deadline): each agent
gets an equal share of what is left (at most a single decision's budget), so time one agent
does not use passes to the next, and an agent whose share runs out is denied with a reason
while the others are still decided. The step's one counter call keeps some room at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pdp.engine.deadline import Deadline


@dataclass
class StepBudget:
    step: Deadline  # the whole decision / step, counters included
    eval_end: float  # monotonic time the agents' evaluation must end by
    per_agent_s: float  # at most this much for one agent
    n: int

    @classmethod
    def start(cls, n: int, budget_s: float, step_budget_s: float, counter_room_s: float,
              outer: Deadline | None, received_at: float | None) -> StepBudget:
        t0 = time.monotonic() if received_at is None else received_at
        step = Deadline(t0 + (budget_s if n <= 1 else max(budget_s, step_budget_s)))
        if outer is not None and outer.expires_at < step.expires_at:
            step = outer
        room = 0.0 if n <= 1 else min(counter_room_s, max(0.0, step.remaining()) / 4)
        return cls(step, step.expires_at - room, budget_s, n)

    def share(self, index: int, now: float) -> Deadline:
        """The deadline of agent ``index`` (0-based) starting ``now``."""
        if self.n <= 1:
            return self.step
        fair = (self.eval_end - now) / (self.n - index)
        return Deadline(min(self.eval_end, now + min(self.per_agent_s, fair)))
