"""The combine stage and what observes the result: the decision is allowed when nothing
denied (or an admin's override was honoured); then its audit record (before the answer in
``sync`` durability, just after it in ``async``), telemetry and notifications, none of which
can change it; drafts are handed to the shadow runner last, after the answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pdp.cel import Budget
from pdp.engine.decision import Decision
from pdp.engine.options import EngineOptions
from pdp.engine.pending import Pending
from pdp.engine.reasons import explanation
from pdp.engine.recorder import Recorder
from pdp.engine.request import CheckRequest
from pdp.engine.shadow import ShadowJob, ShadowRunner
from pdp.notify import Notifier
from pdp.policy.policyset import PolicySet
from pdp.reasons import ReasonCode
from pdp.telemetry import DecisionTelemetry
from pdp.turns import Turns

#: The ``tenant`` metric label of decisions for tenants pdp does not know (tenant names are
#: letters, digits, "_" and "-": this cannot be one).
UNKNOWN_TENANT_LABEL = "(unknown)"


def combine(item: Pending) -> Decision:
    """The final answer of one request: allow iff nothing denied, or the deny is overridden
    by an admin in their own name (always audited; the server makes an override's actor the
    authenticated caller, and one in another name is never honoured). Built-ins' denies are
    overridden too, for this one decision: their reasons stay, marked ``builtin``, and the
    audit record names them (``override.overridden_builtins``)."""
    d = item.decision
    req = item.req
    override = req.override
    if d.reasons and override is not None and req.caller.is_admin \
            and override.actor == req.caller.identity:
        d.overridden = True
    d.allowed = not d.reasons or d.overridden
    d.elapsed_s = time.monotonic() - item.started
    return d


class Answerer:
    """Combines, records and tells the observers, in decision order."""

    def __init__(self, options: Callable[[], EngineOptions], recorder: Recorder,
                 shadow: ShadowRunner, telemetry: DecisionTelemetry,
                 notifier: Notifier | None) -> None:
        self._options = options
        self.recorder = recorder
        self.shadow = shadow
        self.telemetry = telemetry
        self.notifier = notifier

    async def answer(self, policies: PolicySet, pending: Sequence[Pending]) -> list[Decision]:
        opts = self._options()
        later = opts.audit_after_answer
        jobs: list[ShadowJob] = []
        out = []
        turns = Turns()
        for i, item in enumerate(pending):
            if turns.due(i):
                await turns.take()  # a large step: other calls run between slices
            d = combine(item)
            if item.shadow:
                job = ShadowJob(item.req, item.shadow_ctx(), d.decision_id, item.shadow,
                                pushed=d.allowed)
                if opts.shadow_inline:
                    await self._shadow_inline(job, d, opts)
                else:
                    jobs.append(job)
            if not later:
                await self.recorder.record(item.req, d, opts.audit_sync_timeout_s)
            if self.telemetry.enabled:
                self._observe(item.req, d, policies)
            if self.notifier is not None and d.reasons:
                self._notify(policies, item.req, d)
            out.append(d)
        if later and pending:
            self.recorder.record_after_answer([(i.req, i.decision) for i in pending])
        if jobs:
            self.shadow.submit(jobs)
        return out

    async def _shadow_inline(self, job: ShadowJob, d: Decision, opts: EngineOptions) -> None:
        """Offline tools: drafts' would-denies (and explanations) in the decision itself."""
        denies = await self.shadow.run_inline(job)
        d.shadow_denies.extend(denies)
        if job.req.explain and denies:
            by_name = {p.name: p for p in job.policies}
            budget = Budget(deadline=time.monotonic() + opts.shadow.budget_s,
                            cost_limit=opts.shadow.cost_limit)
            d.explanations.extend(explanation(by_name[r.policy], job.ctx, r.code, budget)
                                  for r in denies if r.policy in by_name)

    def _observe(self, req: CheckRequest, d: Decision, policies: PolicySet) -> None:
        tel = self.telemetry
        # A tenant pdp does not know is labelled as such, not by the name the caller sent:
        # made-up names would grow the metrics without bound, and list them to anyone who
        # can read /metrics.
        tenant = req.tenant if policies.knows(req.tenant) else UNKNOWN_TENANT_LABEL
        tel.record_decision("allow" if d.allowed else "deny", tenant, d.checkpoint,
                            d.elapsed_s)
        if any(r.code == ReasonCode.DEADLINE_EXCEEDED for r in d.reasons):
            tel.record_deadline_exceeded(tenant, d.checkpoint)

    def _notify(self, policies: PolicySet, req: CheckRequest, d: Decision) -> None:
        """Tell the owners of the active policies that denied (never blocks, never raises)."""
        assert self.notifier is not None
        denied = {r.policy for r in d.reasons if r.policy}
        if not denied:
            return
        summary = {"decision_id": d.decision_id, "checkpoint": d.checkpoint,
                   "tenant": req.tenant, "allowed": d.allowed, "overridden": d.overridden,
                   "reasons": [{"policy": r.policy, "code": r.code, "message": r.message}
                               for r in d.reasons],
                   "subject": {"agent_id": (req.agent or {}).get("id", ""),
                               "device_id": (req.device or {}).get("id", ""),
                               "rollout_id": (req.rollout or {}).get("id", "")}}
        for p in policies.for_tenant(req.tenant, req.checkpoint):
            if p.name in denied and p.policy.notify and not p.shadow:
                self.notifier.notify(p.name, req.tenant, summary, list(p.policy.notify))
