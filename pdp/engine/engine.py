"""The decision path, as stages that take values and return values:

    context (parse, bounded)  ->  select + evaluate (live policies)  ->  reserve (one store
    call)  ->  combine  ->  record and observers  ->  (after the answer) drafts

One deadline covers every stage of a decision; a step (CheckPushBatch) has one budget for
all its agents, shared fairly, and gives the event loop a turn while it runs. Fail-closed
everywhere: an error, a timeout or an unreadable input in any applicable policy is a deny
with a reason an operator can act on; counters are reserved only when every stateless
policy allowed, so a denied decision never consumes a slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pdp.audit.log import AuditWriteError
from pdp.counters import CounterStore
from pdp.engine import sharing
from pdp.engine.answer import Answerer
from pdp.engine.buckets import request_key
from pdp.engine.budget import StepBudget
from pdp.engine.context import ConfigCache, ConfigRejected, ParseDeadlineExceeded, build_context
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision, Reason
from pdp.engine.evaluate import Evaluator
from pdp.engine.ids import new_decision_ids
from pdp.engine.options import EngineOptions
from pdp.engine.outcomes import Outcomes
from pdp.engine.overruns import Overruns
from pdp.engine.pending import Pending
from pdp.engine.reasons import system_reason
from pdp.engine.recorder import AuditSink, Recorder
from pdp.engine.request import CheckRequest
from pdp.engine.reserve import reserve_all
from pdp.engine.shadow import Repeats, ShadowRunner
from pdp.engine.sharing import BatchMemo
from pdp.notify import Notifier
from pdp.policy.policyset import PolicySet
from pdp.reasons import ReasonCode
from pdp.telemetry import NO_TELEMETRY, DecisionTelemetry
from pdp.turns import sliced


class Engine:
    """Holds the policies in force, the counter store, the audit sink and the caches, and
    runs the stages for each call."""

    def __init__(self, policies: PolicySet, counters: CounterStore, audit: AuditSink,
                 configs: ConfigCache, options: EngineOptions | None = None, *,
                 telemetry: DecisionTelemetry = NO_TELEMETRY,
                 notifier: Notifier | None = None) -> None:
        self.policies = policies
        self.counters = counters
        self.audit = audit
        self.configs = configs
        self.recorder = Recorder(audit, configs)
        self._options = options or EngineOptions()
        self.telemetry = telemetry
        self.notifier = notifier
        self.evaluator = Evaluator(lambda: self._options, configs, counters, telemetry)
        sharing.prepare()  # what the first step would otherwise pay inside its budget
        self.shadow = ShadowRunner(self.evaluator.evaluate_policy, self.evaluator.reason,
                                   audit.emit, self._options.shadow,
                                   count=self.evaluator.shadow_counter,
                                   repeats=Repeats(self.evaluator.overruns,
                                                   self.evaluator.fingerprint))
        self.shadow.on_skip = telemetry.record_shadow_skipped
        self.answerer = Answerer(lambda: self._options, self.recorder, self.shadow, telemetry,
                                 notifier)
        self.outcomes = Outcomes(lambda: self.policies, counters, audit.emit,
                                 self.evaluator.reason, self._options.counter_timeout_s)
        self.options = self._options

    @property
    def options(self) -> EngineOptions:
        return self._options

    @options.setter
    def options(self, options: EngineOptions) -> None:
        self._options = options
        self.recorder.seen_refresh_s = options.seen_refresh_s
        self.shadow.options = options.shadow

    @property
    def overruns(self) -> Overruns:
        return self.evaluator.overruns

    def record_pending(self) -> None:
        """Queue the records of every answered decision still waiting for them (shutdown,
        before the audit log closes)."""
        self.recorder.record_pending()

    def replace_policies(self, policies: PolicySet) -> None:
        """Swap the policy set atomically (decisions in flight keep the one they started with)."""
        self.policies = policies

    async def check(self, req: CheckRequest, budget_s: float,
                    outer: Deadline | None = None, *,
                    received_at: float | None = None) -> Decision:
        """Decide one request. Raises InvalidRequest for requests that cannot be decided,
        AuditWriteError when its audit record could not be kept (see ``AuditLog.refusing``).

        ``budget_s`` covers the whole decision from ``received_at`` (``time.monotonic()``
        when the call arrived; now if not given): config parse, selection, evaluation,
        explanation and the counter call. ``outer`` (the caller's gRPC deadline) caps it.
        """
        [decision] = await self.check_batch([req], budget_s, outer, received_at=received_at)
        return decision

    async def check_batch(self, reqs: Sequence[CheckRequest], budget_s: float,
                          outer: Deadline | None = None, *,
                          received_at: float | None = None) -> list[Decision]:
        """Decide many requests of one tenant (a rollout step) with ONE counter-store call.

        One deadline covers the step: ``budget_s`` for a single request,
        ``options.step_budget_s`` for a step (never past ``outer``), shared fairly by its
        agents (see budget.py), and the loop gets a turn every ``options.yield_every_s``.
        """
        refusing = self.recorder.audit.refusing
        if refusing is not None:  # records that could not be kept: decide nothing
            raise AuditWriteError(refusing)
        opts = self._options
        policies = self.policies  # the set this call started with, whatever reloads
        n = len(reqs)
        budget = StepBudget.start(n, budget_s, opts.step_budget_s, opts.step_counter_timeout_s,
                                  outer, received_at, opts.step_agent_max_s)
        memo = BatchMemo(policies) if n > 1 else None
        now = opts.now() if opts.now else None
        if memo is not None and now is None:
            now = datetime.now(UTC)  # a step is decided at one instant
        # Agents that differ only in their id share one stateless verdict (buckets.py). Not
        # with per-policy telemetry spans: each agent's policies would have to be traced.
        buckets: dict[Any, Pending] | None = (
            {} if memo is not None and not self.telemetry.enabled else None)
        pending: list[Pending] = []
        last_yield = time.monotonic()
        # A call that waited its whole budget before it got here (behind other large
        # requests, or with a caller's deadline already gone) is denied saying so, not
        # charged to whatever stage would notice first.
        late = budget.step.expired()
        for index, (req, decision_id) in enumerate(zip(reqs, new_decision_ids(n),
                                                       strict=True)):
            started = time.monotonic()
            if n == 1 and received_at is not None:
                started = received_at  # its elapsed time is the caller's, from arrival
            if late:
                pending.append(_refused(req, decision_id, started, system_reason(
                    ReasonCode.DEADLINE_EXCEEDED,
                    "the deadline ran out before the decision started"
                    f" ({(last_yield - (received_at or last_yield)) * 1000:.0f} ms after the"
                    " call arrived)")))
                continue
            if n > 1 and started - last_yield >= opts.yield_every_s:
                await asyncio.sleep(0)  # other calls (and health checks) are served meanwhile
                started = last_yield = time.monotonic()
            deadline = budget.share(index, started)
            key = None
            if buckets is not None and not req.explain:
                key = request_key(req)
                rep = buckets.get(key) if key is not None else None
                if rep is not None and rep.shared is not None:
                    pending.append(self.evaluator.from_bucket(rep.shared, req, decision_id,
                                                              started, deadline, memo))
                    continue
            try:
                # A step's config is parsed once for all its agents: step-level work, under
                # the step's deadline rather than one agent's share.
                ctx = await build_context(req, self.configs, now, deadline=max(
                    deadline.expires_at, budget.eval_end))
            except ParseDeadlineExceeded as exc:
                pending.append(_refused(req, decision_id, started, system_reason(
                    ReasonCode.DEADLINE_EXCEEDED,
                    f"the decision deadline ran out while the config was parsed: {exc}")))
                continue
            except ConfigRejected as exc:
                pending.append(_refused(req, decision_id, started, system_reason(
                    ReasonCode.INVALID_CONFIG, str(exc))))
                continue
            # Sliced: a policy that runs long gives the loop a turn every turns.SLICE_S,
            # so one call's evaluation never holds the others for its whole deadline.
            item = await sliced(self.evaluator.evaluate, policies, req, ctx, deadline,
                                started, memo, key is not None, decision_id)
            if key is not None and item.shared is not None:
                assert buckets is not None
                buckets[key] = item
            pending.append(item)
        await reserve_all(self.counters, self.telemetry, self.evaluator.reason,
                          reqs[0].tenant if reqs else "", pending, budget.step,
                          opts.counter_timeout_s if n <= 1 else opts.step_counter_timeout_s)
        return await self.answerer.answer(policies, pending)


def _refused(req: CheckRequest, decision_id: str, started: float, reason: Reason) -> Pending:
    """A request denied before evaluation (its config could not be read in time or at all)."""
    decision = Decision(decision_id, False, req.checkpoint.value, datetime.now(UTC))
    decision.reasons.append(reason)
    return Pending(req, decision, started, None, [], {})


__all__ = ["Engine", "EngineOptions"]
