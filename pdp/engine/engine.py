"""The decision path: context -> select -> evaluate -> reserve counters -> decide -> audit.

Fail-closed everywhere: an error, a timeout or an unreadable input in any applicable policy is
a deny with a reason an operator can act on. Counters are reserved only when every stateless
policy allowed, in one store call, so a denied decision never consumes a slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from pdp.cel import Budget, BudgetExceeded, DeadlineExceeded
from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterStateLost,
    CounterStore,
    CounterStoreUnavailable,
    scope_key,
)
from pdp.engine.buckets import (
    BUCKET_SCOPES,
    Stateless,
    request_key,
)
from pdp.engine.context import (
    ConfigCache,
    ConfigRejected,
    ParseDeadlineExceeded,
    build_context,
)
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision, Explanation, Reason
from pdp.engine.ids import new_decision_ids
from pdp.engine.outcomes import Outcomes
from pdp.engine.overruns import OVERRUN_CODES, Overruns, fingerprint
from pdp.engine.recorder import AuditSink, Recorder
from pdp.engine.request import CheckRequest
from pdp.engine.shadow import ShadowJob, ShadowOptions, ShadowRunner, shadow_of
from pdp.engine.sharing import BatchMemo, agent_free_conjuncts, shareable_verdict
from pdp.notify import Notifier
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import (
    Deny,
)
from pdp.telemetry import NO_TELEMETRY, DecisionTelemetry

log = structlog.get_logger("pdp.engine")

_COUNTER_KINDS = {
    "daily_cap": CounterKind.DAILY_CAP,
    "cooldown": CounterKind.COOLDOWN,
    "velocity": CounterKind.VELOCITY,
    "rollback_rate": CounterKind.ROLLBACK_RATE,
    "min_step_duration": CounterKind.MIN_STEP_DURATION,
}


@dataclass
class EngineOptions:
    cost_limit: int = 1_000_000
    #: The one counter-store call of a single decision may take at most this (and never more
    #: than what is left of the decision's deadline).
    counter_timeout_s: float = 0.02
    #: A step's (CheckPushBatch) budget when the caller's own deadline is not shorter: one
    #: budget for the whole step, shared fairly by its agents (never more than the single
    #: decision budget each).
    step_budget_s: float = 1.0
    #: The one counter-store call of a step may take at most this; the agents' shares of the
    #: step budget leave it room.
    step_counter_timeout_s: float = 0.1
    #: A step gives the event loop a turn at least this often (other calls, health checks).
    yield_every_s: float = 0.002
    #: Deny messages (policy messages, error texts) are cut to this many UTF-8 bytes.
    max_message_bytes: int = 5 * 1024
    #: Drafts: their own budget and backlog, after the answer (see shadow.py).
    shadow: ShadowOptions = field(default_factory=ShadowOptions)
    #: Evaluate drafts within the decision and report them in ``shadow_denies`` (offline
    #: tools only: policy tests, replay). A server never sets it: drafts must not touch the
    #: live answer or its latency.
    shadow_inline: bool = False
    #: A tenant pdp does not know (no policy, never created): ``deny`` (UNKNOWN_TENANT), or
    #: ``builtins`` (decided by the built-ins alone: single-tenant set-ups only).
    unknown_tenants: str = "deny"
    # Returns why the policy set cannot be trusted (policy store out of reach), or None.
    policies_stale: Callable[[], str | None] | None = None
    # Decision time source (policy tests and replay pin it); None = the wall clock.
    now: Callable[[], datetime] | None = None
    # A Config.Seen / Policies.Seen event is written again when its last copy is older than
    # this (see Recorder).
    seen_refresh_s: float = 3600.0
    # Make a decision's audit records just after its answer instead of before: only for an
    # audit log that does not wait for the disk (``async`` durability). See Recorder.
    audit_after_answer: bool = False


@dataclass
class _Pending:
    """One request between its stateless phase and its counter reservation."""

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


def cap_message(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, saying so: a deny message goes into the
    response and the audit record, and a policy may build one of any size."""
    if len(text) * 4 <= limit:
        return text  # fits whatever its characters
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    note = f"... (truncated, {len(raw)} bytes)"
    return raw[:max(0, limit - len(note))].decode("utf-8", "ignore") + note


def _reason(p: CompiledPolicy, deny: Deny, limit: int = 5 * 1024) -> Reason:
    return Reason(p.name, p.policy.version, p.rule_kind, deny.code,
                  cap_message(deny.message, limit), deny.retry_after_s, p.policy.builtin)


def _explain(p: CompiledPolicy, ctx: EvalContext, code: str, budget: Budget) -> Explanation:
    """Only for requests that asked (``explain``), only for denying policies; within what
    is left of the decision's own deadline and cost budget."""
    from pdp.policy.explain import explain_policy

    return Explanation(p.name, explain_policy(p, ctx, code, budget=budget))


def _system(code: str, message: str, retry_after_s: float | None = None) -> Reason:
    return Reason("", 0, "system", code, cap_message(message, 5 * 1024), retry_after_s)


#: Counter rules (policy, scope) single decisions keep between calls; cleared when full.
_COUNTER_RULE_CACHE = 4096

def _counter_rule(p: CompiledPolicy, scope: str) -> CounterRule | str:
    """The store's rule for policy ``p`` at ``scope``, or why it is invalid."""
    spec = p.counter
    assert spec is not None
    try:
        return CounterRule(
            rule_id=f"{p.name}@v{p.policy.version}", kind=_COUNTER_KINDS[spec.kind],
            scope_key=scope, max_count=spec.max_count,
            window_seconds=float(spec.window_seconds),
            min_interval_seconds=float(spec.min_interval_seconds), timezone=spec.timezone,
            threshold_percent=spec.threshold_percent,
            min_deployments=max(1, spec.min_deployments), counter_id=p.name)
    except ValueError as exc:
        return str(exc)


#: A deadline overrun is remembered (see overruns.py) only when the policy itself ran this
#: long: one cut short at its start says nothing about the policy.
MIN_OVERRUN_S = 0.002

#: Checkpoints that ask about a collector config: it must be there, and be a mapping.
_CONFIG_CHECKPOINTS = frozenset({Checkpoint.PUSH, Checkpoint.AUTO_APPLY})


def _config_problem(req: CheckRequest, ctx: EvalContext) -> str | None:
    """Why the config cannot be judged (then the decision denies), or None. An empty or
    scalar config would otherwise pass every policy that looks for something in it."""
    if req.checkpoint not in _CONFIG_CHECKPOINTS:
        return None
    for name, field_name in (("config", "config.yaml"),
                             ("previous_config", "previous_config.yaml")):
        value = ctx.activation.get(name)
        if value is None and name == "previous_config":
            continue
        if type(value) is not dict:
            what = "empty" if value is None else f"a {type(value).__name__}"
            return (f"{field_name}: a {req.checkpoint.value} needs a collector config that is a"
                    f" mapping, got {what}")
    return None


class Engine:
    """Holds the policies in force, the counter store, the audit sink and the caches."""

    def __init__(self, policies: PolicySet, counters: CounterStore, audit: AuditSink,
                 configs: ConfigCache, options: EngineOptions | None = None, *,
                 telemetry: DecisionTelemetry = NO_TELEMETRY,
                 notifier: Notifier | None = None) -> None:
        self.policies = policies
        self.counters = counters
        self.audit = audit
        self.configs = configs
        self.recorder = Recorder(audit, configs)
        self.options = options or EngineOptions()
        self.telemetry = telemetry
        self.notifier = notifier
        self._counter_rule_cache: dict[tuple[int, str],
                                       tuple[CompiledPolicy, CounterRule | str]] = {}
        # id(selection list) -> (that list, its live policies, its drafts)
        self._splits: dict[int, tuple[list[CompiledPolicy], list[CompiledPolicy],
                                      list[CompiledPolicy]]] = {}
        self.shadow = ShadowRunner(self._evaluate_policy, self._reason, audit.emit,
                                   self.options.shadow, peek=self._peek_counter)
        self.shadow.on_skip = telemetry.record_shadow_skipped
        self.overruns = Overruns()
        self.outcomes = Outcomes(lambda: self.policies, counters, audit.emit, self._reason,
                                 self.options.counter_timeout_s)

    async def _peek_counter(self, p: CompiledPolicy, ctx: EvalContext,
                            budget: Budget) -> Deny | None:
        """A draft's counter rule: the verdict a reservation would give, nothing consumed."""
        rule = self._counter_rule(p, ctx, budget)
        if isinstance(rule, Deny):
            return rule
        timeout = min(budget.deadline_at - time.monotonic(), self.options.counter_timeout_s)
        if timeout <= 0:
            return Deny("DEADLINE_EXCEEDED", "the shadow budget ran out before the counter"
                                             " store was asked")
        try:
            result = await self.counters.peek(ctx.tenant, [rule], timeout=timeout)
        except CounterStateLost as exc:
            return Deny("COUNTER_STATE_LOST", f"counter rules deny: {exc}")
        except (CounterStoreUnavailable, ValueError) as exc:
            return Deny("COUNTER_STORE_UNAVAILABLE", f"counter store unavailable: {exc}")
        if result.allowed:
            return None
        return Deny(result.code, result.message, result.retry_after_seconds)

    def _fingerprint(self, req: CheckRequest) -> bytes:
        digest = self.configs.digest
        return fingerprint(req, (digest(req.config_yaml) if req.config_yaml else None,
                                 digest(req.previous_config_yaml)
                                 if req.previous_config_yaml else None))

    def _reason(self, p: CompiledPolicy, deny: Deny) -> Reason:
        return _reason(p, deny, self.options.max_message_bytes)

    def _split(self, selected: list[CompiledPolicy]
               ) -> tuple[list[CompiledPolicy], list[CompiledPolicy]]:
        """(live, drafts) of a selection, remembered per list (selections are shared)."""
        hit = self._splits.get(id(selected))
        if hit is None or hit[0] is not selected:
            live, shadow = shadow_of(selected)
            if len(self._splits) >= 4096:
                self._splits.clear()
            hit = self._splits[id(selected)] = (selected, live, shadow)
        return hit[1], hit[2]

    @property
    def options(self) -> EngineOptions:
        return self._options

    @options.setter
    def options(self, options: EngineOptions) -> None:
        self._options = options
        self.recorder.seen_refresh_s = options.seen_refresh_s
        if hasattr(self, "shadow"):
            self.shadow.options = options.shadow

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
        """Decide one request. Raises InvalidRequest for requests that cannot be decided.

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

        Stages: context (parse, bounded by the deadline) -> select -> evaluate (live
        policies only) -> reserve (one store call) -> combine -> record; shadow policies
        are handed to the ShadowRunner after the answer. One deadline covers the step:
        ``budget_s`` for a single request, ``options.step_budget_s`` for a step (never
        past ``outer``); each agent gets a fair share of what is left (at most
        ``budget_s``), and the loop gets a turn every ``options.yield_every_s``.
        """
        opts = self.options
        t0 = time.monotonic() if received_at is None else received_at
        n = len(reqs)
        step = Deadline(t0 + (budget_s if n <= 1 else max(budget_s, opts.step_budget_s)))
        if outer is not None and outer.expires_at < step.expires_at:
            step = outer
        # A step's agents leave room for its one counter call at the end.
        counter_room = 0.0 if n <= 1 else min(opts.step_counter_timeout_s,
                                               max(0.0, step.remaining()) / 4)
        eval_end = step.expires_at - counter_room
        pending: list[_Pending] = []
        memo = BatchMemo(self.policies) if n > 1 else None
        now = opts.now() if opts.now else None
        if memo is not None and now is None:
            now = datetime.now(UTC)  # a step is decided at one instant
        # Agents that differ only in their id share one stateless verdict (buckets.py). Not
        # with per-policy telemetry spans: each agent's policies would have to be traced.
        buckets: dict[Any, _Pending] | None = (
            {} if memo is not None and not self.telemetry.enabled else None)
        ids = new_decision_ids(n)
        last_yield = time.monotonic()
        for index, (req, decision_id) in enumerate(zip(reqs, ids, strict=True)):
            started = time.monotonic()
            if n > 1 and started - last_yield >= opts.yield_every_s:
                await asyncio.sleep(0)  # other calls (and health checks) are served meanwhile
                started = last_yield = time.monotonic()
            deadline = step if n <= 1 else Deadline(min(
                eval_end, started + min(budget_s, (eval_end - started) / (n - index))))
            key = None
            if buckets is not None and not req.explain:
                key = request_key(req)
                rep = buckets.get(key) if key is not None else None
                if rep is not None and rep.shared is not None:
                    pending.append(self._from_bucket(rep.shared, req, decision_id, started,
                                                     deadline, memo))
                    continue
            try:
                # A step's config is parsed once for all its agents: step-level work, under
                # the step's deadline rather than one agent's share.
                ctx = await build_context(req, self.configs, now,
                                          deadline=max(deadline.expires_at, eval_end))
            except ParseDeadlineExceeded as exc:
                pending.append(self._refused(req, decision_id, started, _system(
                    "DEADLINE_EXCEEDED", f"the decision deadline ran out while the config"
                                         f" was parsed: {exc}")))
                continue
            except ConfigRejected as exc:
                pending.append(self._refused(req, decision_id, started,
                                             _system("INVALID_CONFIG", str(exc))))
                continue
            item = self._evaluate(req, ctx, deadline, started, memo, share=key is not None,
                                  decision_id=decision_id)
            if key is not None and item.shared is not None:
                assert buckets is not None
                buckets[key] = item
            pending.append(item)
        await self._reserve_all(reqs[0].tenant if reqs else "", pending, step)
        return await self._answer(pending)

    def _refused(self, req: CheckRequest, decision_id: str, started: float,
                 reason: Reason) -> _Pending:
        decision = Decision(decision_id, False, req.checkpoint.value, datetime.now(UTC))
        decision.reasons.append(reason)
        return _Pending(req, decision, started, None, [], {})

    async def _answer(self, pending: Sequence[_Pending]) -> list[Decision]:
        """Combine each decision, record it (before the answer in sync durability), tell the
        observers; then hand the drafts to the shadow runner."""
        out = []
        later = self.options.audit_after_answer
        inline = self.options.shadow_inline
        jobs: list[ShadowJob] = []
        for item in pending:
            d = item.decision
            if item.shadow:
                job = ShadowJob(item.req, item.shadow_ctx(), d.decision_id, item.shadow)
                if inline:
                    await self._shadow_inline(job, d)
                else:
                    jobs.append(job)
            if d.reasons and item.req.override is not None and item.req.caller.is_admin:
                d.overridden = True
            d.allowed = not d.reasons or d.overridden
            d.elapsed_s = time.monotonic() - item.started
            if not later:
                await self.recorder.record(item.req, d)
            if self.telemetry.enabled:
                self._observe(item.req, d)
            if self.notifier is not None and d.reasons:
                self._notify(item, d)
            out.append(d)
        if later and pending:
            self.recorder.record_after_answer([(i.req, i.decision) for i in pending])
        if jobs:
            self.shadow.submit(jobs)
        return out

    async def _shadow_inline(self, job: ShadowJob, d: Decision) -> None:
        """Offline tools: drafts' would-denies (and explanations) in the decision itself."""
        denies = await self.shadow.run_inline(job)
        d.shadow_denies.extend(denies)
        if job.req.explain and denies:
            by_name = {p.name: p for p in job.policies}
            budget = Budget(deadline=time.monotonic() + self.options.shadow.budget_s,
                            cost_limit=self.options.shadow.cost_limit)
            d.explanations.extend(_explain(by_name[r.policy], job.ctx, r.code, budget)
                                  for r in denies if r.policy in by_name)

    def _observe(self, req: CheckRequest, d: Decision) -> None:
        tel = self.telemetry
        tel.record_decision("allow" if d.allowed else "deny", req.tenant, d.checkpoint,
                            d.elapsed_s)
        if any(r.code == "DEADLINE_EXCEEDED" for r in d.reasons):
            tel.record_deadline_exceeded(req.tenant, d.checkpoint)

    def _notify(self, item: _Pending, d: Decision) -> None:
        """Tell the owners of the active policies that denied (never blocks, never raises)."""
        assert self.notifier is not None
        denied = {r.policy for r in d.reasons if r.policy}
        if not denied:
            return
        summary = {"decision_id": d.decision_id, "checkpoint": d.checkpoint,
                   "tenant": item.req.tenant, "allowed": d.allowed, "overridden": d.overridden,
                   "reasons": [{"policy": r.policy, "code": r.code, "message": r.message}
                               for r in d.reasons],
                   "subject": {"agent_id": (item.req.agent or {}).get("id", ""),
                               "device_id": (item.req.device or {}).get("id", ""),
                               "rollout_id": (item.req.rollout or {}).get("id", "")}}
        for p in self.policies.for_tenant(item.req.tenant, item.req.checkpoint):
            if p.name in denied and p.policy.notify and not p.shadow:
                self.notifier.notify(p.name, item.req.tenant, summary, list(p.policy.notify))

    def _from_bucket(self, shared: Stateless, req: CheckRequest, decision_id: str,
                     started: float, deadline: Deadline, memo: BatchMemo | None) -> _Pending:
        """This agent's decision from the stateless verdict of an agent that differs from it
        only in its id; its own decision id and counter rules (the scope may be its id)."""
        decision = Decision(decision_id, False, req.checkpoint.value, shared.ctx.now)
        decision.reasons.extend(shared.reasons)
        decision.evaluated.extend(shared.evaluated)
        item = _Pending(req, decision, started, deadline, [], {}, ctx=shared.ctx,
                        shadow=shared.shadow)
        if decision.reasons:
            return item
        agent_id = (req.agent or {}).get("id") if shared.per_agent is not None else None
        if shared.rules is not None and shared.per_agent is None:
            item.rules.extend(shared.rules)  # scopes the bucket shares: the same rules
            item.by_id = shared.by_id
        elif shared.rules is not None and agent_id and type(agent_id) is str:
            scope = scope_key("agent", agent_id)
            assert scope is not None  # agent_id is a non-empty str
            item.rules.extend([r.rescoped(scope) if mine else r
                               for r, mine in zip(shared.rules, shared.per_agent or (),
                                                  strict=True)])
            item.by_id = shared.by_id  # rule ids do not name the scope
        elif shared.counted:
            base = shared.ctx
            ctx = EvalContext(base.tenant, base.checkpoint, base.now,
                              {**base.activation, "agent": req.agent or {}})
            budget = Budget(deadline=deadline.expires_at, cost_limit=self.options.cost_limit)
            self._counter_rules(item, shared.counted, ctx, budget, memo)
        return item

    def _evaluate(self, req: CheckRequest, ctx: EvalContext, deadline: Deadline,
                  started: float, memo: BatchMemo | None = None,
                  share: bool = False, decision_id: str = "") -> _Pending:
        """The stateless phase; returns the counter rules still to reserve (if all allowed).
        With ``share``, also what other agents of its bucket may take (``item.shared``)."""
        # No agent: None (selectors that need one do not match); an agent without labels: {}.
        agent_labels = None if req.agent is None else req.agent.get("labels") or {}
        device_labels = None if req.device is None else req.device.get("labels") or {}
        if memo is None:
            selected = self.policies.select(req.tenant, req.checkpoint, req.change,
                                            agent_labels, device_labels)
            group = -1
        else:
            selected = memo.select(req, agent_labels, device_labels)
            group = memo.group(ctx.activation)
        budget = Budget(deadline=deadline.expires_at, cost_limit=self.options.cost_limit)
        decision = Decision(decision_id, False, req.checkpoint.value, ctx.now)
        live, shadow = self._split(selected)
        item = _Pending(req, decision, started, deadline, [], {}, ctx=ctx, shadow=shadow)
        stale = self.options.policies_stale() if self.options.policies_stale else None
        if stale is not None:
            decision.reasons.append(_system("POLICY_STORE_UNAVAILABLE", stale))
            return item
        if self.options.unknown_tenants == "deny" and not self.policies.knows(req.tenant):
            decision.reasons.append(_system(
                "UNKNOWN_TENANT", f"tenant {req.tenant[:100]!r} is not known here (it has no"
                                  " policy and was not created): check its spelling, or have"
                                  " an admin create it"))
            item.shadow = ()
            return item
        problem = _config_problem(req, ctx)
        if problem is not None:
            decision.reasons.append(_system("INVALID_CONFIG", problem))
            item.shadow = ()
            return item
        counted: list[CompiledPolicy] = []
        traced = self.telemetry.enabled
        evaluated = decision.evaluated
        overruns = self.overruns
        fp: bytes | None = None
        for p in live:
            evaluated.append(p.ref)
            deny = None
            if overruns and overruns.watched(p):
                fp = fp or self._fingerprint(req)
                deny = overruns.recall(p, fp, deadline.remaining())
            if deny is None:
                began = time.monotonic()
                if traced:
                    with self.telemetry.policy_span(p.name):
                        deny = self._evaluate_one(p, ctx, budget, deadline, memo, group)
                else:
                    deny = self._evaluate_one(p, ctx, budget, deadline, memo, group)
                if deny is not None and deny.code in OVERRUN_CODES:
                    spent = time.monotonic() - began
                    if deny.code == "COST_LIMIT_EXCEEDED" or spent >= MIN_OVERRUN_S:
                        fp = fp or self._fingerprint(req)
                        overruns.remember(p, fp, deny, spent)
            if deny is not None:
                decision.reasons.append(self._reason(p, deny))
                if req.explain:
                    decision.explanations.append(_explain(p, ctx, deny.code, budget))
                if deny.code == "DEADLINE_EXCEEDED":
                    break
            elif p.counter is not None:
                counted.append(p)
        evaluated.extend(p.ref for p in shadow)  # handed to the shadow runner
        shared = None
        if share and memo is not None and not memo.id_bound(selected, group) \
                and shareable_verdict(selected, decision):
            shared = Stateless(tuple(decision.reasons), (), tuple(evaluated), tuple(counted),
                               ctx, shadow=tuple(shadow))
        if not decision.reasons and counted:
            self._counter_rules(item, counted, ctx, budget, memo)
            if shared is not None and not decision.reasons:
                scopes = [p.counter.scope if p.counter is not None else "" for p in counted]
                if all(s in BUCKET_SCOPES or s == "agent" for s in scopes):
                    per_agent = tuple(s == "agent" for s in scopes)
                    shared = replace(shared, rules=tuple(item.rules), by_id=item.by_id,
                                     per_agent=per_agent if any(per_agent) else None)
        item.shared = shared
        return item

    def _evaluate_one(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                      deadline: Deadline, memo: BatchMemo | None = None,
                      group: int = -1) -> Deny | None:
        if deadline.expired():
            return Deny("DEADLINE_EXCEEDED",
                        "the decision deadline ran out before this policy was evaluated")
        if group >= 0 and memo is not None:
            if memo.isshareable(p):
                return self._evaluate_shared(p, ctx, budget, memo, group)
            if p.deny is not None and p.stateless is None and p.broken is None \
                    and self._false_for_group(p, ctx, budget, memo, group):
                return None
        return self._evaluate_policy(p, ctx, budget)

    def _false_for_group(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                         memo: BatchMemo, group: int) -> bool:
        """Whether the agent-free conjuncts of ``p``'s deny expression are false for this
        group of agents (then so is the expression: not denied). Evaluated once per group
        on a budget of its own; each agent is charged its cost, as if it had evaluated it."""
        assert p.deny is not None
        key = (group, id(p))
        hit = memo.prefixes.get(key)
        if hit is None or hit[0] is not p:
            prefix = agent_free_conjuncts(p.deny.source)
            if prefix is None:
                memo.prefixes[key] = (p, False, 0)
                return False
            own = Budget(deadline=budget.deadline,
                         cost_limit=None if budget.cost_limit is None
                         else max(0, budget.cost_limit - budget.cost))
            try:
                is_false = prefix.evaluate(ctx.activation, budget=own) is False
            except DeadlineExceeded:
                return False  # not cached: the full evaluation will say what happened
            except Exception:
                is_false = False
            hit = memo.prefixes[key] = (p, is_false, own.cost)
        if not hit[1] or budget.cost + hit[2] > budget.limit:
            return False
        budget.cost += hit[2]
        return True

    def _evaluate_policy(self, p: CompiledPolicy, ctx: EvalContext,
                         budget: Budget) -> Deny | None:
        try:
            return p.evaluate(ctx, budget)
        except DeadlineExceeded:
            return Deny("DEADLINE_EXCEEDED",
                        "the decision deadline ran out while this policy was evaluated")
        except Exception as exc:  # fail-closed on any defect, and say so
            log.error("policy_evaluation_failed", policy=p.name, error=repr(exc))
            return Deny("POLICY_ERROR", f"internal error while evaluating: {type(exc).__name__}")

    def _evaluate_shared(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                         memo: BatchMemo, group: int) -> Deny | None:
        """In a batch: reuse the verdict another agent of the same group got from a policy
        that reads nothing per-agent, when this agent's budget covers its cost."""
        key = (group, id(p))
        hit = memo.verdicts.get(key)
        if hit is not None and hit[0] is p:
            if budget.cost + hit[2] <= budget.limit:
                budget.cost += hit[2]
                return hit[1]
            return self._evaluate_policy(p, ctx, budget)  # let it fail as it would
        before = budget.cost
        deny = self._evaluate_policy(p, ctx, budget)
        if budget.cost <= budget.limit and (deny is None or deny.code in ("POLICY_DENIED",
                                                                           "POLICY_ERROR")):
            # Deterministic answers only: deadline and cost-limit outcomes (also a message
            # expression cut short) depend on this agent's budget, not on the inputs.
            memo.verdicts[key] = (p, deny, budget.cost - before)
        return deny

    def _counter_rules(self, item: _Pending, counted: Sequence[CompiledPolicy],
                       ctx: EvalContext, budget: Budget, memo: BatchMemo | None = None) -> None:
        """The store's rules for ``counted`` at this request's scopes; the first that
        cannot be made denies (and no rule is reserved)."""
        for p in counted:
            rule = self._counter_rule(p, ctx, budget, memo)
            if isinstance(rule, Deny):
                item.decision.reasons.append(self._reason(p, rule))
                item.rules.clear()
                return
            item.by_id[rule.rule_id] = p
            item.rules.append(rule)

    def _counter_rule(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                      memo: BatchMemo | None = None) -> CounterRule | Deny:
        """``p``'s counter rule at the scope this request names, or why there is none."""
        spec = p.counter
        assert spec is not None
        try:
            scope = p.scope_key(ctx, budget)
        except BudgetExceeded as exc:
            code = ("DEADLINE_EXCEEDED" if isinstance(exc, DeadlineExceeded)
                    else "COST_LIMIT_EXCEEDED")
            return Deny(code, f"counter scope expression ran out of budget: {exc}")
        except Exception as exc:  # fail-closed on any defect, and say so
            return Deny("POLICY_ERROR",
                        f"counter scope could not be worked out: {type(exc).__name__}")
        if scope is None:
            return Deny("INVALID_INPUT", f"counter scope {spec.scope!r} needs a value the"
                                         " request does not carry (e.g. rollout.id, agent.id)")
        # A batch remembers its rules; single decisions share a small engine-wide cache
        # (a tenant- or rollout-wide rule is the same object call after call).
        cache = memo.counter_rules if memo is not None else self._counter_rule_cache
        hit = cache.get((id(p), scope))
        if hit is not None and hit[0] is p:
            rule = hit[1]
        else:
            rule = _counter_rule(p, scope)
            if memo is None and len(cache) >= _COUNTER_RULE_CACHE:
                cache.clear()
            cache[(id(p), scope)] = (p, rule)
        if isinstance(rule, str):
            return Deny("POLICY_INVALID", f"counter rule is invalid: {rule}")
        return rule

    async def _reserve_all(self, tenant: str, pending: Sequence[_Pending],
                           step: Deadline) -> None:
        """The reserve stage: every counter rule of the decisions still allowed, in one
        store call, within what is left of the (step's) deadline."""
        todo = [i for i in pending if i.rules and not i.decision.reasons]
        if not todo:
            return
        per_call = (self.options.counter_timeout_s if len(pending) <= 1
                    else self.options.step_counter_timeout_s)
        timeout = min(step.remaining(), per_call)
        if timeout <= 0:
            for i in todo:
                i.decision.reasons.append(_system(
                    "DEADLINE_EXCEEDED", "the decision deadline ran out before counters were"
                                         " reserved"))
            return
        try:
            with self.telemetry.counter_span():
                if len(todo) == 1:
                    results = [await self.counters.reserve(tenant, todo[0].rules,
                                                           timeout=timeout)]
                else:
                    results = await self.counters.reserve_batch(
                        tenant, [i.rules for i in todo], timeout=timeout)
        except CounterStateLost as exc:
            for i in todo:
                i.decision.reasons.append(_system(
                    "COUNTER_STATE_LOST", f"counter rules deny: {exc}"))
            return
        except (CounterStoreUnavailable, ValueError) as exc:
            self.telemetry.record_counter_error(tenant)
            for i in todo:
                i.decision.reasons.append(_system(
                    "COUNTER_STORE_UNAVAILABLE",
                    f"counter store unavailable, so counter rules deny: {exc}"))
            return
        for i, result in zip(todo, results, strict=True):
            if result.allowed:
                continue
            denier = i.by_id.get(result.denied_rule_id or "")
            deny = Deny(result.code, result.message, result.retry_after_seconds)
            i.decision.reasons.append(self._reason(denier, deny) if denier is not None
                                      else _system(result.code, result.message))
            if i.req.explain and denier is not None and denier.counter is not None:
                from pdp.policy.explain import explain_counter

                i.decision.explanations.append(Explanation(
                    denier.name, explain_counter(denier.counter, result.retry_after_seconds)))
