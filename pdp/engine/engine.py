"""The decision path: context -> select -> evaluate -> reserve counters -> decide -> audit.

Fail-closed everywhere: an error, a timeout or an unreadable input in any applicable policy is
a deny with a reason an operator can act on. Counters are reserved only when every stateless
policy allowed, in one store call, so a denied decision never consumes a slot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from pdp.cel import Budget, DeadlineExceeded
from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterStore,
    CounterStoreUnavailable,
)
from pdp.engine.buckets import (
    BUCKET_SCOPES,
    Stateless,
    request_key,
)
from pdp.engine.context import ConfigCache, ConfigRejected, build_context
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision, Explanation, PolicyRef, Reason
from pdp.engine.recorder import AuditSink, Recorder
from pdp.engine.request import CheckRequest
from pdp.engine.sharing import BatchMemo, agent_free_conjuncts, shareable_verdict
from pdp.notify import Notifier
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import (
    AutoRollback,
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
    counter_timeout_s: float = 0.02
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


@dataclass
class HealthVerdict:
    decision_id: str
    rollback: bool
    reasons: list[Reason]
    evaluated: list[PolicyRef]


def new_decision_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` spells it; built directly, at
    under half the cost."""
    return _uuid4_text(os.urandom(16))


def new_decision_ids(n: int) -> list[str]:
    """``n`` of them from one read of the random source (one per agent of a step)."""
    raw = os.urandom(16 * n)
    return [_uuid4_text(raw[i:i + 16]) for i in range(0, 16 * n, 16)]


def _uuid4_text(random16: bytes) -> str:
    b = bytearray(random16)
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ref(p: CompiledPolicy) -> PolicyRef:
    return p.ref


def _reason(p: CompiledPolicy, deny: Deny) -> Reason:
    return Reason(p.name, p.policy.version, p.rule_kind, deny.code, deny.message,
                  deny.retry_after_s, p.policy.builtin)


def _explain(p: CompiledPolicy, ctx: EvalContext, code: str) -> Explanation:
    """Only for requests that asked (``explain``), only for denying policies."""
    from pdp.policy.explain import explain_policy

    return Explanation(p.name, explain_policy(p, ctx, code))


def _system(code: str, message: str, retry_after_s: float | None = None) -> Reason:
    return Reason("", 0, "system", code, message, retry_after_s)


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

    @property
    def options(self) -> EngineOptions:
        return self._options

    @options.setter
    def options(self, options: EngineOptions) -> None:
        self._options = options
        self.recorder.seen_refresh_s = options.seen_refresh_s

    def record_pending(self) -> None:
        """Queue the records of every answered decision still waiting for them (shutdown,
        before the audit log closes)."""
        self.recorder.record_pending()

    def replace_policies(self, policies: PolicySet) -> None:
        """Swap the policy set atomically (decisions in flight keep the one they started with)."""
        self.policies = policies

    async def check(self, req: CheckRequest, budget_s: float,
                    outer: Deadline | None = None) -> Decision:
        """Decide one request. Raises InvalidRequest for requests that cannot be decided.

        The budget (``budget_s``) covers evaluation and the counter call, as the design says;
        parsing the config comes before it. ``outer`` (the caller's gRPC deadline) caps it.
        """
        [decision] = await self.check_batch([req], budget_s, outer)
        return decision

    async def check_batch(self, reqs: Sequence[CheckRequest], budget_s: float,
                          outer: Deadline | None = None) -> list[Decision]:
        """Decide many requests of one tenant (a rollout step) with ONE counter-store call.

        The config is parsed once (content-hash cache); each request's policies run under
        their own ``budget_s``; every counter reservation of the step goes to the store in a
        single ``reserve_batch``, in request order, under the caller's deadline.
        """
        pending: list[_Pending] = []
        memo = BatchMemo(self.policies) if len(reqs) > 1 else None
        now = self.options.now() if self.options.now else None
        if memo is not None and now is None:
            now = datetime.now(UTC)  # a step is decided at one instant
        # Agents that differ only in their id share one stateless verdict (buckets.py). Not
        # with per-policy telemetry spans: each agent's policies would have to be traced.
        buckets: dict[Any, _Pending] | None = (
            {} if memo is not None and not self.telemetry.enabled else None)
        ids = new_decision_ids(len(reqs))
        for req, decision_id in zip(reqs, ids, strict=True):
            started = time.perf_counter()
            deadline = Deadline.after(budget_s)
            if outer is not None and outer.expires_at < deadline.expires_at:
                deadline = outer
            key = None
            if buckets is not None and not req.explain:
                key = request_key(req)
                rep = buckets.get(key) if key is not None else None
                if rep is not None and rep.shared is not None:
                    pending.append(self._from_bucket(rep.shared, req, decision_id, started,
                                                     deadline, memo))
                    continue
            try:
                ctx = await build_context(req, self.configs, now)
            except ConfigRejected as exc:
                decision = Decision(decision_id, False, req.checkpoint.value,
                                    datetime.now(UTC))
                decision.reasons.append(_system("INVALID_CONFIG", str(exc)))
                pending.append(_Pending(req, decision, started, None, [], {}))
                continue
            item = self._evaluate(req, ctx, deadline, started, memo, share=key is not None,
                                  decision_id=decision_id)
            if key is not None and item.shared is not None:
                assert buckets is not None
                buckets[key] = item
            pending.append(item)
        await self._reserve_all(reqs[0].tenant if reqs else "", pending, outer)
        out = []
        later = self.options.audit_after_answer
        for item in pending:
            d = item.decision
            if d.reasons and item.req.override is not None and item.req.caller.is_admin:
                d.overridden = True
            d.allowed = not d.reasons or d.overridden
            d.elapsed_s = time.perf_counter() - item.started
            if not later:
                await self.recorder.record(item.req, d)
            if self.telemetry.enabled:
                self._observe(item.req, d)
            if self.notifier is not None and d.reasons:
                self._notify(item, d)
            out.append(d)
        if later and pending:
            self.recorder.record_after_answer([(i.req, i.decision) for i in pending])
        return out

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
        decision.shadow_denies.extend(shared.shadow_denies)
        decision.evaluated.extend(shared.evaluated)
        item = _Pending(req, decision, started, deadline, [], {})
        if decision.reasons:
            return item
        agent_id = (req.agent or {}).get("id") if shared.per_agent is not None else None
        if shared.rules is not None and shared.per_agent is None:
            item.rules.extend(shared.rules)  # scopes the bucket shares: the same rules
            item.by_id = shared.by_id
        elif shared.rules is not None and agent_id and type(agent_id) is str:
            scope = f"agent:{agent_id}"  # what CompiledPolicy.scope_key makes of it
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
        agent_labels = (req.agent or {}).get("labels")
        device_labels = (req.device or {}).get("labels")
        if memo is None:
            selected = self.policies.select(req.tenant, req.checkpoint, req.change,
                                            agent_labels, device_labels)
            group = -1
        else:
            selected = memo.select(req, agent_labels, device_labels)
            group = memo.group(ctx.activation)
        budget = Budget(deadline=deadline.expires_at, cost_limit=self.options.cost_limit)
        decision = Decision(decision_id, False, req.checkpoint.value, ctx.now)
        item = _Pending(req, decision, started, deadline, [], {})
        stale = self.options.policies_stale() if self.options.policies_stale else None
        if stale is not None:
            decision.reasons.append(_system("POLICY_STORE_UNAVAILABLE", stale))
            return item
        counted: list[CompiledPolicy] = []
        traced = self.telemetry.enabled
        evaluated = decision.evaluated
        for p in selected:
            evaluated.append(p.ref)
            if traced:
                with self.telemetry.policy_span(p.name):
                    deny = self._evaluate_one(p, ctx, budget, deadline, memo, group)
            else:
                deny = self._evaluate_one(p, ctx, budget, deadline, memo, group)
            if deny is not None:
                (decision.shadow_denies if p.shadow else decision.reasons).append(_reason(p, deny))
                if req.explain:
                    decision.explanations.append(_explain(p, ctx, deny.code))
                if deny.code == "DEADLINE_EXCEEDED" and not p.shadow:
                    break
            elif p.counter is not None and not p.shadow:
                counted.append(p)
        shared = None
        if share and memo is not None and not memo.id_bound(selected, group) \
                and shareable_verdict(selected, decision):
            shared = Stateless(tuple(decision.reasons), tuple(decision.shadow_denies),
                               tuple(evaluated), tuple(counted), ctx)
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
        for p in counted:
            spec = p.counter
            assert spec is not None
            scope = p.scope_key(ctx, budget)
            if scope is None:
                item.decision.reasons.append(_reason(p, Deny(
                    "INVALID_INPUT", f"counter scope {spec.scope!r} needs a value the request"
                                     " does not carry (e.g. rollout.id, agent.id)")))
                item.rules.clear()
                return
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
                item.decision.reasons.append(_reason(p, Deny(
                    "POLICY_INVALID", f"counter rule is invalid: {rule}")))
                item.rules.clear()
                return
            item.by_id[rule.rule_id] = p
            item.rules.append(rule)

    async def _reserve_all(self, tenant: str, pending: Sequence[_Pending],
                           outer: Deadline | None) -> None:
        todo = [i for i in pending if i.rules and not i.decision.reasons]
        if not todo:
            return
        if len(todo) == 1 and todo[0].deadline is not None:
            remaining = todo[0].deadline.remaining()  # one decision: its own budget
        else:
            # A step: each agent's budget covered its own evaluation; the one store call for
            # all of them is bounded by the caller's deadline and the counter timeout.
            remaining = outer.remaining() if outer is not None else float("inf")
        if outer is not None:
            remaining = min(remaining, outer.remaining())
        per_call = self.options.counter_timeout_s
        if len(todo) > 1:  # a step's script does work per agent: allow for it
            per_call = per_call * 4 + 0.00005 * len(todo)
        timeout = min(remaining, per_call)
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
            i.decision.reasons.append(_reason(denier, deny) if denier is not None
                                      else _system(result.code, result.message))
            if i.req.explain and denier is not None and denier.counter is not None:
                from pdp.policy.explain import explain_counter

                i.decision.explanations.append(Explanation(
                    denier.name, explain_counter(denier.counter, result.retry_after_seconds)))

    async def record_event(self, tenant: str, kind: CounterEventKind, scope_keys: Sequence[str],
                           deadline: Deadline) -> str:
        """A deploy / rollback / step advance happened: feed the counters, audit it."""
        event_id = new_decision_id()
        await self.counters.record_event(tenant, kind, scope_keys,
                                         timeout=max(0.001, deadline.remaining()))
        self.audit.emit({"type": "Rollout.Event", "event_id": event_id, "tenant": tenant,
                         "kind": kind.value, "scope_keys": list(scope_keys),
                         "time": datetime.now(UTC).isoformat()})
        return event_id

    async def evaluate_health(self, tenant: str, activation: dict[str, Any],
                              change: dict[str, str],
                              deadline: Deadline | None = None) -> HealthVerdict:
        """Auto-rollback thresholds of the tenant's policies against live metrics."""
        now = datetime.now(UTC)
        ctx = EvalContext(tenant, Checkpoint.ROLLOUT_PRECONDITION, now,
                          {**activation, "now": now})
        verdict = HealthVerdict(new_decision_id(), False, [], [])
        seen = set()
        for cp in Checkpoint:
            for p in self.policies.select(tenant, cp, change, None, None):
                if not isinstance(p.stateless, AutoRollback) or p.shadow or p.name in seen:
                    continue
                seen.add(p.name)
                verdict.evaluated.append(_ref(p))
                verdict.reasons.extend(_reason(p, d) for d in p.stateless.breaches(ctx))
        verdict.rollback = bool(verdict.reasons)
        if verdict.rollback:
            # Feeds ROLLBACK_RATE: the same scope keys RecordEvent(ROLLBACK) would use.
            rollout_id = (activation.get("rollout") or {}).get("id")
            keys = ["tenant", *([f"rollout:{rollout_id}"] if rollout_id else [])]
            try:
                await self.record_event(tenant, CounterEventKind.ROLLBACK, keys,
                                        deadline or Deadline.after(self.options.counter_timeout_s))
            except CounterStoreUnavailable as exc:  # the verdict stands; say it was not counted
                log.error("rollback_event_not_recorded", tenant=tenant, error=repr(exc))
        self.audit.emit({"type": "Rollout.HealthEvaluated", "decision_id": verdict.decision_id,
                         "tenant": tenant, "time": now.isoformat(), "rollback": verdict.rollback,
                         "reasons": [r.message for r in verdict.reasons],
                         "metrics": activation.get("metrics", {})})
        return verdict

