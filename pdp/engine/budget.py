"""One budget for a decision or a whole step, shared fairly by the step's agents.

A single decision has ``budget_s`` from the moment its call arrived. A step has one budget
for all its agents (``step_budget_s``, never past the caller's own deadline), shared so
that no agent can starve the others and no hiccup starves an agent:

* every agent still to come is guaranteed a reserve, a quarter of an equal share of the
  step's evaluation time (``RESERVE_SHARE``); an agent may use what is left above the
  reserves of those after it, so time one agent does not use passes to the next;
* no agent takes more than a single decision's budget, nor more than ``agent_max_s`` at
  once (the loop gets a turn between agents, so this bounds how long other calls wait);
* an agent whose time runs out is denied with a reason while the others are still decided.

The step's one counter call keeps some room at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pdp.engine.deadline import Deadline

#: Each agent still to come keeps this share of an equal split of the evaluation time.
RESERVE_SHARE = 0.25


@dataclass
class StepBudget:
    step: Deadline  # the whole decision / step, counters included
    eval_end: float  # monotonic time the agents' evaluation must end by
    per_agent_s: float  # at most this much for one agent
    reserve_s: float  # guaranteed to each agent still to come
    n: int

    @classmethod
    def start(cls, n: int, budget_s: float, step_budget_s: float, counter_room_s: float,
              outer: Deadline | None, received_at: float | None,
              agent_max_s: float = 0.02) -> StepBudget:
        t0 = time.monotonic() if received_at is None else received_at
        step = Deadline(t0 + (budget_s if n <= 1 else max(budget_s, step_budget_s)))
        if outer is not None and outer.expires_at < step.expires_at:
            step = outer
        room = 0.0 if n <= 1 else min(counter_room_s, max(0.0, step.remaining()) / 4)
        eval_end = step.expires_at - room
        equal = max(0.0, eval_end - t0) / max(1, n)
        reserve = equal * RESERVE_SHARE
        # One agent may use up to agent_max_s, or its equal share of the step where that is
        # more, but never more than a single decision's budget: in a small step an agent
        # gets what one push would (a pause of the machine does not deny it while most of
        # the step's time is left); in a large one, no agent holds the others up.
        per_agent = min(budget_s, max(agent_max_s, equal))
        return cls(step, eval_end, per_agent if n > 1 else budget_s, reserve, n)

    def share(self, index: int, now: float) -> Deadline:
        """The deadline of agent ``index`` (0-based) starting ``now``."""
        if self.n <= 1:
            return self.step
        after = self.n - index - 1  # agents still to come after this one
        return Deadline(min(self.eval_end - after * self.reserve_s, now + self.per_agent_s))
