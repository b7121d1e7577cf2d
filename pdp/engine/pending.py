"""One request between its stages: what evaluation concluded, what is left to reserve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pdp.counters import CounterRule
from pdp.engine.buckets import Stateless
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision
from pdp.engine.request import CheckRequest
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext


@dataclass
class Pending:
    """A request after evaluation: its decision so far (reasons, evaluated policies), the
    counter rules still to reserve if it is still allowed, and what a step may share."""

    req: CheckRequest
    decision: Decision
    started: float
    deadline: Deadline | None
    rules: list[CounterRule]
    by_id: dict[str, CompiledPolicy]
    shared: Stateless | None = None
    ctx: EvalContext | None = None
    # Drafts that applied: evaluated after the answer (ShadowRunner), in ``ctx``.
    shadow: Sequence[CompiledPolicy] = ()

    def shadow_ctx(self) -> EvalContext:
        """The context the drafts see: this request's (a bucket's, with this agent)."""
        ctx = self.ctx
        assert ctx is not None
        agent = self.req.agent or {}
        if ctx.activation.get("agent") is agent:
            return ctx
        return EvalContext(ctx.tenant, ctx.checkpoint, ctx.now,
                           {**ctx.activation, "agent": agent})
