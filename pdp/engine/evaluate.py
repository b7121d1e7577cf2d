"""The select and evaluate stages: which policies apply to a request, and what the live ones
say of it within its deadline; the counter rules left to reserve if all of them allowed.

Drafts are only selected here (handed to the ShadowRunner after the answer). A request for a
tenant nobody created, or whose config cannot be judged, is denied before any policy runs.
In a step, verdicts are shared where what a policy reads (``CompiledPolicy.verdict_reads``)
cannot differ between the agents (sharing.py, buckets.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from pdp.cel import Budget, BudgetExceeded, DeadlineExceeded
from pdp.counters import CounterRule, CounterStateLost, CounterStore, CounterStoreUnavailable
from pdp.counters import scope_key as make_scope_key
from pdp.engine.buckets import BUCKET_SCOPES, Stateless, frozen
from pdp.engine.context import ConfigCache
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision, Reason
from pdp.engine.options import EngineOptions
from pdp.engine.overruns import OVERRUN_CODES, Overruns, fingerprint, worth_remembering
from pdp.engine.pending import Pending
from pdp.engine.reasons import explanation, policy_reason, system_reason
from pdp.engine.request import CheckRequest
from pdp.engine.shadow import shadow_of
from pdp.engine.sharing import BatchMemo, agent_free_conjuncts, shareable_verdict
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import Deny, OutsideCalendar
from pdp.reasons import ReasonCode
from pdp.telemetry import DecisionTelemetry

log = structlog.get_logger("pdp.engine")

#: Counter rules (policy, scope) single decisions keep between calls; cleared when full.
COUNTER_RULE_CACHE = 4096
#: Verdicts remembered per parsed config (see Evaluator._config_verdict); cleared when full.
VERDICTS_PER_CONFIG = 256
#: Checkpoints that ask about a collector config: it must be there, and be a mapping.
CONFIG_CHECKPOINTS = frozenset({Checkpoint.PUSH, Checkpoint.AUTO_APPLY})


def _field(activation: dict[str, Any], path: str) -> Any:
    """The value at ``section.field`` of an activation (None when absent)."""
    section, _, name = path.partition(".")
    value = activation.get(section)
    return value.get(name) if isinstance(value, dict) else None


def config_problem(req: CheckRequest, ctx: EvalContext) -> str | None:
    """Why the config cannot be judged (then the decision denies), or None. An empty or
    scalar config would otherwise pass every policy that looks for something in it."""
    if req.checkpoint not in CONFIG_CHECKPOINTS:
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


class Evaluator:
    """Selects and evaluates; holds what outlives one call (overruns, rule caches)."""

    def __init__(self, options: Callable[[], EngineOptions], configs: ConfigCache,
                 counters: CounterStore, telemetry: DecisionTelemetry) -> None:
        self._options = options
        self.configs = configs
        self.counters = counters
        self.telemetry = telemetry
        self.overruns = Overruns()
        self._counter_rule_cache: dict[tuple[int, str],
                                       tuple[CompiledPolicy, CounterRule | str]] = {}
        # id(selection list) -> (that list, its live policies, its drafts)
        self._splits: dict[int, tuple[list[CompiledPolicy], list[CompiledPolicy],
                                      list[CompiledPolicy]]] = {}

    def reason(self, p: CompiledPolicy, deny: Deny) -> Reason:
        return policy_reason(p, deny, self._options().max_message_bytes)

    # -- select --------------------------------------------------------------------------

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

    def _refusal(self, policies: PolicySet, req: CheckRequest, ctx: EvalContext) -> Reason | None:
        """Why the request is denied before any policy runs, or None."""
        opts = self._options()
        stale = opts.policies_stale() if opts.policies_stale else None
        if stale is not None:
            return system_reason(ReasonCode.POLICY_STORE_UNAVAILABLE, stale)
        if opts.unknown_tenants == "deny" and not policies.knows(req.tenant):
            return system_reason(
                ReasonCode.UNKNOWN_TENANT,
                f"tenant {req.tenant[:100]!r} is not known here (it has no policy and was not"
                " created): check its spelling, or have an admin create it")
        problem = config_problem(req, ctx)
        if problem is not None:
            return system_reason(ReasonCode.INVALID_CONFIG, problem)
        return None

    # -- evaluate ------------------------------------------------------------------------

    def evaluate(self, policies: PolicySet, req: CheckRequest, ctx: EvalContext,
                 deadline: Deadline, started: float, memo: BatchMemo | None = None,
                 share: bool = False, decision_id: str = "") -> Pending:
        """The stateless phase; returns the counter rules still to reserve (if all allowed).
        With ``share``, also what other agents of its bucket may take (``item.shared``)."""
        # No agent: None (selectors that need one do not match); an agent without labels: {}.
        agent_labels = None if req.agent is None else req.agent.get("labels") or {}
        device_labels = None if req.device is None else req.device.get("labels") or {}
        if memo is None:
            selected = policies.select(req.tenant, req.checkpoint, req.change,
                                       agent_labels, device_labels)
            group = -1
        else:
            selected = memo.select(req, agent_labels, device_labels)
            group = memo.group(ctx.activation)
        budget = Budget(deadline=deadline.expires_at, cost_limit=self._options().cost_limit)
        decision = Decision(decision_id, False, req.checkpoint.value, ctx.now)
        live, shadow = self._split(selected)
        item = Pending(req, decision, started, deadline, [], {}, ctx=ctx, shadow=shadow)
        refusal = self._refusal(policies, req, ctx)
        if refusal is not None:
            decision.reasons.append(refusal)
            item.shadow = ()  # nothing was decided: drafts have nothing to compare with
            return item
        counted = self._evaluate_live(req, ctx, live, budget, deadline, memo, group, decision)
        decision.evaluated.extend(p.ref for p in shadow)  # handed to the shadow runner
        shared = None
        if share and memo is not None and not memo.id_bound(selected, group) \
                and shareable_verdict(selected, decision):
            shared = Stateless(tuple(decision.reasons), (), tuple(decision.evaluated),
                               tuple(counted), ctx, shadow=tuple(shadow))
        if not decision.reasons and counted:
            self.counter_rules(item, counted, ctx, budget, memo)
            if shared is not None and not decision.reasons:
                scopes = [p.counter.scope if p.counter is not None else "" for p in counted]
                if all(s in BUCKET_SCOPES or s == "agent" for s in scopes):
                    per_agent = tuple(s == "agent" for s in scopes)
                    shared = replace(shared, rules=tuple(item.rules), by_id=item.by_id,
                                     per_agent=per_agent if any(per_agent) else None)
        item.shared = shared
        return item

    def _evaluate_live(self, req: CheckRequest, ctx: EvalContext,
                       live: list[CompiledPolicy], budget: Budget, deadline: Deadline,
                       memo: BatchMemo | None, group: int,
                       decision: Decision) -> list[CompiledPolicy]:
        """Every live policy in order (the first deadline overrun ends it): their denies go
        into ``decision``; returns the counter policies left to reserve."""
        counted: list[CompiledPolicy] = []
        traced = self.telemetry.enabled
        overruns = self.overruns
        watching = bool(overruns)  # only policies that overran before are looked up
        fp: bytes | None = None
        for p in live:
            decision.evaluated.append(p.ref)
            deny = None
            if watching and overruns.watched(p):
                fp = fp or self.fingerprint(req)
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
                    if worth_remembering(deny, spent):
                        fp = fp or self.fingerprint(req)
                        overruns.remember(p, fp, deny, spent)
            if deny is not None:
                if deny.violations:  # one reason per violation (a CEL violations rule)
                    decision.reasons.extend(self.reason(p, replace(deny, message=m))
                                            for m in deny.violations)
                    if deny.omitted:
                        decision.reasons.append(self.reason(p, replace(
                            deny, message=f"... and {deny.omitted} more violations")))
                else:
                    decision.reasons.append(self.reason(p, deny))
                if req.explain and (req.explain_cel or p.stateless is not None):
                    decision.explanations.append(explanation(p, ctx, deny.code, budget))
                if deny.code == ReasonCode.DEADLINE_EXCEEDED:
                    break
            elif p.counter is not None:
                counted.append(p)
        return counted

    def fingerprint(self, req: CheckRequest) -> bytes:
        """What tells this request from another for the overrun memo (configs by hash)."""
        digest = self.configs.digest
        return fingerprint(req, (digest(req.config_yaml) if req.config_yaml else None,
                                 digest(req.previous_config_yaml)
                                 if req.previous_config_yaml else None))

    def _evaluate_one(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                      deadline: Deadline, memo: BatchMemo | None = None,
                      group: int = -1) -> Deny | None:
        if deadline.expired():
            return Deny(ReasonCode.DEADLINE_EXCEEDED,
                        "the decision deadline ran out before this policy was evaluated")
        if p.config_keyed is not None:
            return self._config_verdict(p, p.config_keyed, ctx, budget)
        if group >= 0 and memo is not None:
            if memo.isshareable(p):
                return self._evaluate_shared(p, ctx, budget, memo, group)
            if p.deny is not None and p.stateless is None and p.broken is None \
                    and self._false_for_group(p, ctx, budget, memo, group):
                return None
        return self.evaluate_policy(p, ctx, budget)

    def _config_verdict(self, p: CompiledPolicy, fields: tuple[str, ...], ctx: EvalContext,
                        budget: Budget) -> Deny | None:
        """The verdict of a rule that reads the configs and ``fields``, once per (config,
        previous config, values of ``fields``): kept with the parsed config in the cache
        (it goes when the config does; at most VERDICTS_PER_CONFIG per config)."""
        act = ctx.activation
        config, previous = act.get("config"), act.get("previous_config")
        try:
            values = tuple([frozen(_field(act, f)) for f in fields]) if fields else ()
        except TypeError:
            return self.evaluate_policy(p, ctx, budget)
        memo: dict[Any, Any] = self.configs.derived(config).setdefault("verdicts", {})
        key = (id(p), id(previous), values)
        hit = memo.get(key)
        if hit is not None and hit[0] is p and hit[1] is previous:
            deny: Deny | None = hit[2]
            return deny
        deny = self.evaluate_policy(p, ctx, budget)
        if deny is None or deny.code not in OVERRUN_CODES:
            if len(memo) >= VERDICTS_PER_CONFIG:
                memo.clear()
            memo[key] = (p, previous, deny)
        return deny

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

    def evaluate_policy(self, p: CompiledPolicy, ctx: EvalContext,
                        budget: Budget) -> Deny | None:
        """One policy's stateless verdict, fail-closed on any defect."""
        try:
            return p.evaluate(ctx, budget)
        except DeadlineExceeded:
            return Deny(ReasonCode.DEADLINE_EXCEEDED,
                        "the decision deadline ran out while this policy was evaluated")
        except OutsideCalendar as exc:
            return Deny(ReasonCode.POLICY_ERROR, str(exc))
        except Exception as exc:  # fail-closed on any defect, and say so
            log.error("policy_evaluation_failed", policy=p.name, error=repr(exc))
            return Deny(ReasonCode.POLICY_ERROR,
                        f"internal error while evaluating: {type(exc).__name__}")

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
            return self.evaluate_policy(p, ctx, budget)  # let it fail as it would
        before = budget.cost
        deny = self.evaluate_policy(p, ctx, budget)
        if budget.cost <= budget.limit and (deny is None or deny.code in (
                ReasonCode.POLICY_DENIED, ReasonCode.POLICY_ERROR)):
            # Deterministic answers only: deadline and cost-limit outcomes (also a message
            # expression cut short) depend on this agent's budget, not on the inputs.
            memo.verdicts[key] = (p, deny, budget.cost - before)
        return deny

    # -- a step's agents that differ only in their id ------------------------------------

    def from_bucket(self, shared: Stateless, req: CheckRequest, decision_id: str,
                    started: float, deadline: Deadline, memo: BatchMemo | None) -> Pending:
        """This agent's decision from the stateless verdict of an agent that differs from it
        only in its id; its own decision id and counter rules (the scope may be its id)."""
        decision = Decision(decision_id, False, req.checkpoint.value, shared.ctx.now)
        decision.reasons.extend(shared.reasons)
        decision.evaluated.extend(shared.evaluated)
        item = Pending(req, decision, started, deadline, [], {}, ctx=shared.ctx,
                       shadow=shared.shadow)
        if decision.reasons:
            return item
        agent_id = (req.agent or {}).get("id") if shared.per_agent is not None else None
        if shared.rules is not None and shared.per_agent is None:
            item.rules.extend(shared.rules)  # scopes the bucket shares: the same rules
            item.by_id = shared.by_id
        elif shared.rules is not None and agent_id and type(agent_id) is str:
            scope = make_scope_key("agent", agent_id)
            assert scope is not None  # agent_id is a non-empty str
            item.rules.extend([r.rescoped(scope) if mine else r
                               for r, mine in zip(shared.rules, shared.per_agent or (),
                                                  strict=True)])
            item.by_id = shared.by_id  # rule ids do not name the scope
        elif shared.counted:
            base = shared.ctx
            ctx = EvalContext(base.tenant, base.checkpoint, base.now,
                              {**base.activation, "agent": req.agent or {}})
            budget = Budget(deadline=deadline.expires_at,
                            cost_limit=self._options().cost_limit)
            self.counter_rules(item, shared.counted, ctx, budget, memo)
        return item

    # -- counter rules -------------------------------------------------------------------

    def counter_rules(self, item: Pending, counted: Sequence[CompiledPolicy],
                      ctx: EvalContext, budget: Budget, memo: BatchMemo | None = None) -> None:
        """The store's rules for ``counted`` at this request's scopes; the first that
        cannot be made denies (and no rule is reserved)."""
        for p in counted:
            rule = self.counter_rule(p, ctx, budget, memo)
            if isinstance(rule, Deny):
                item.decision.reasons.append(self.reason(p, rule))
                item.rules.clear()
                return
            item.by_id[rule.rule_id] = p
            item.rules.append(rule)

    def counter_rule(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                     memo: BatchMemo | None = None) -> CounterRule | Deny:
        """``p``'s counter rule at the scope this request names, or why there is none."""
        spec = p.counter
        assert spec is not None
        try:
            scope = p.scope_key(ctx, budget)
        except BudgetExceeded as exc:
            code = (ReasonCode.DEADLINE_EXCEEDED if isinstance(exc, DeadlineExceeded)
                    else ReasonCode.COST_LIMIT_EXCEEDED)
            return Deny(code, f"counter scope expression ran out of budget: {exc}")
        except Exception as exc:  # fail-closed on any defect, and say so
            return Deny(ReasonCode.POLICY_ERROR,
                        f"counter scope could not be worked out: {type(exc).__name__}")
        if scope is None:
            return Deny(ReasonCode.INVALID_INPUT,
                        f"counter scope {spec.scope!r} needs a value the request does not"
                        " carry (e.g. rollout.id, agent.id)")
        # A batch remembers its rules; single decisions share a small engine-wide cache
        # (a tenant- or rollout-wide rule is the same object call after call).
        cache = memo.counter_rules if memo is not None else self._counter_rule_cache
        hit = cache.get((id(p), scope))
        if hit is not None and hit[0] is p:
            rule = hit[1]
        else:
            rule = p.counter_rule(scope)
            if memo is None and len(cache) >= COUNTER_RULE_CACHE:
                cache.clear()
            cache[(id(p), scope)] = (p, rule)
        if isinstance(rule, str):
            return Deny(ReasonCode.POLICY_INVALID, f"counter rule is invalid: {rule}")
        return rule

    async def shadow_counter(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                             pushed: bool) -> Deny | None:
        """A draft's counter rule, in the draft's own counter (never a live one): when the
        push went ahead (``pushed``) it is reserved there, as it would be were the draft
        active, so the draft's later would-denies count it; otherwise only asked."""
        rule = self.counter_rule(p, ctx, budget)
        if isinstance(rule, Deny):
            return rule
        timeout = min(budget.deadline_at - time.monotonic(), self._options().counter_timeout_s)
        if timeout <= 0:
            return Deny(ReasonCode.DEADLINE_EXCEEDED,
                        "the shadow budget ran out before the counter store was asked")
        try:
            if pushed:
                result = await self.counters.reserve(ctx.tenant, [rule], timeout=timeout)
            else:
                result = await self.counters.peek(ctx.tenant, [rule], timeout=timeout)
        except CounterStateLost as exc:
            return Deny(ReasonCode.COUNTER_STATE_LOST, f"counter rules deny: {exc}")
        except (CounterStoreUnavailable, ValueError) as exc:
            return Deny(ReasonCode.COUNTER_STORE_UNAVAILABLE,
                        f"counter store unavailable: {exc}")
        if result.allowed:
            return None
        return Deny(result.code, result.message, result.retry_after_seconds)
