"""The decision path: context -> select -> evaluate -> reserve counters -> decide -> audit.

Fail-closed everywhere: an error, a timeout or an unreadable input in any applicable policy is
a deny with a reason an operator can act on. Counters are reserved only when every stateless
policy allowed, in one store call, so a denied decision never consumes a slot.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from pdp.audit.events import config_seen, events_for_decision, policies_seen
from pdp.cel import Budget, DeadlineExceeded, Program, new_pdp_environment
from pdp.cel import ast as cel_ast
from pdp.cel.explain import unparse as cel_unparse
from pdp.cel.parser import parse as cel_parse
from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterStore,
    CounterStoreUnavailable,
)
from pdp.engine.buckets import (
    BUCKET_SCOPES,
    BUDGET_CODES,
    Stateless,
    id_free,
    message_id_free,
    request_key,
)
from pdp.engine.context import ConfigCache, ConfigRejected, build_context
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Decision, Explanation, PolicyRef, Reason, policies_list
from pdp.engine.request import CheckRequest
from pdp.notify import Notifier
from pdp.policy.builtins import TlsInsecureRemote
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import (
    AutoRollback,
    Deny,
    DeviceConstraints,
    MaxStepPercent,
    RequireApproval,
)
from pdp.telemetry import NO_TELEMETRY, DecisionTelemetry

log = structlog.get_logger("pdp.engine")

#: Decisions whose audit events ``_record_later`` makes per loop turn (at least; a quarter
#: of the backlog when that is more, so it keeps up with steps arriving back to back).
_RECORD_SLICE = 64
#: Answered decisions whose records may wait for the loop: past this, the next decision
#: records the backlog before its own answer (memory stays bounded under any load).
_RECORD_BACKLOG = 8192

#: Distinct (tenant, field, config hash) remembered as already written to the audit log.
CONFIGS_SEEN_MAX = 4096

_COUNTER_KINDS = {
    "daily_cap": CounterKind.DAILY_CAP,
    "cooldown": CounterKind.COOLDOWN,
    "velocity": CounterKind.VELOCITY,
    "rollback_rate": CounterKind.ROLLBACK_RATE,
    "min_step_duration": CounterKind.MIN_STEP_DURATION,
}


class AuditSink(Protocol):
    """What the engine needs of the audit pipeline."""

    def emit(self, event: dict[str, Any]) -> None:
        """Queue an event; never blocks the decision."""

    async def log_decision(self, decision: dict[str, Any]) -> None:
        """Audit a decision (and its derived events); waits for fsync in sync mode only."""


@dataclass
class EngineOptions:
    cost_limit: int = 1_000_000
    counter_timeout_s: float = 0.02
    # Returns why the policy set cannot be trusted (policy store out of reach), or None.
    policies_stale: Callable[[], str | None] | None = None
    # Decision time source (policy tests and replay pin it); None = the wall clock.
    now: Callable[[], datetime] | None = None
    # A Config.Seen / Policies.Seen event is written again when its last copy is older than
    # this, so a reader of a trimmed stream (Redis MAXLEN) or of recent files only finds the
    # text a decision names within this much history, not only at process start.
    seen_refresh_s: float = 3600.0
    # Build and queue a decision's audit events on the loop's next turn, after its answer
    # is ready, instead of before: the caller is not kept waiting for them (about a quarter
    # of a 1 000-agent step). Only for an audit log that does not wait for the disk
    # (``async`` durability); its events are in memory until written either way.
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


def _debug_enabled() -> bool:
    bound = log.bind()  # the logger as configured (structlog caches it on first use)
    check = getattr(bound, "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))


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


#: CEL variables whose value differs between the agents of one step (or between calls).
_PER_AGENT_VARS = frozenset({"agent", "now"})


@functools.lru_cache(maxsize=65_536)
def _idents(source: str) -> frozenset[str] | None:
    """Every identifier a CEL source names (variables, and conservatively also comprehension
    variables), or None if it does not parse here."""
    try:
        root = cel_parse(source)
    except Exception:
        return None
    names: set[str] = set()
    stack: list[cel_ast.Expr] = [root]
    while stack:
        e = stack.pop()
        if isinstance(e, cel_ast.Ident):
            names.add(e.name)
        stack.extend(cel_ast.children(e))
    return frozenset(names)


#: Typed rules that read neither the agent nor the clock (checked against their code: they
#: read only the rollout, the device or the config section of the context).
_SHAREABLE_TYPED: frozenset[type] = frozenset({MaxStepPercent, RequireApproval,
                                               DeviceConstraints, TlsInsecureRemote})


def _names_in(root: cel_ast.Expr) -> set[str]:
    names: set[str] = set()
    stack = [root]
    while stack:
        e = stack.pop()
        if isinstance(e, cel_ast.Ident):
            names.add(e.name)
        stack.extend(cel_ast.children(e))
    return names


@functools.cache
def _prefix_env() -> Any:
    return new_pdp_environment()


@functools.lru_cache(maxsize=65_536)
def _agent_free_conjuncts(source: str) -> Program | None:
    """For ``a && b && agent... && c``: the conjuncts that name no per-agent variable, as one
    program. When it is false for a batch, the whole expression is false for every agent of
    it (CEL's ``&&`` is false as soon as any side is, whatever the others give)."""
    try:
        root = cel_parse(source)
    except Exception:
        return None
    conjuncts: list[cel_ast.Expr] = []
    stack = [root]
    while stack:
        e = stack.pop()
        if (isinstance(e, cel_ast.Call) and e.function == "_&&_" and e.target is None
                and len(e.args) == 2):
            stack.extend(reversed(e.args))
        else:
            conjuncts.append(e)
    free = [c for c in conjuncts if not _names_in(c) & _PER_AGENT_VARS]
    if not free or len(free) == len(conjuncts):
        return None
    try:
        return _prefix_env().compile(" && ".join(f"({cel_unparse(c)})" for c in free))  # type: ignore[no-any-return]
    except Exception:
        return None


def _shareable(p: CompiledPolicy) -> bool:
    """Whether a policy's verdict can be shared by the agents of one batch whose other inputs
    are the same: a CEL rule (its programs see nothing but the activation) that names no
    per-agent variable, or a typed rule of a kind known to read nothing per-agent. Other
    typed rules, broken and counter-only policies are evaluated per agent."""
    if p.broken is not None:
        return False
    if p.stateless is not None:
        return type(p.stateless) in _SHAREABLE_TYPED
    if p.deny is None:
        return False
    for prog in (p.deny, p.message):
        if prog is None:
            continue
        found = _idents(prog.source)
        if found is None or found & _PER_AGENT_VARS:
            return False
    return True


#: Counter rules (policy, scope) single decisions keep between calls; cleared when full.
_COUNTER_RULE_CACHE = 4096

#: Distinct sets of shared inputs (config, rollout, ...) one batch tracks; agents beyond
#: that are evaluated on their own.
_MAX_GROUPS = 4


class _BatchMemo:
    """What the agents of one ``check_batch`` call share: the policy set they started with,
    selections by labels, verdicts of policies that read nothing per-agent (per group of
    agents whose other inputs are the same objects or equal), counter rules."""

    __slots__ = ("counter_rules", "groups", "id_free_selections", "policies", "prefixes",
                 "shareable", "verdicts")

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.groups: list[dict[str, Any]] = []
        self.shareable: dict[int, tuple[CompiledPolicy, bool]] = {}
        self.verdicts: dict[tuple[int, int], tuple[CompiledPolicy, Deny | None, int]] = {}
        self.counter_rules: dict[tuple[int, str], tuple[CompiledPolicy, CounterRule | str]] = {}
        # (group, policy) -> (policy, agent-free conjuncts false?, their cost)
        self.prefixes: dict[tuple[int, int], tuple[CompiledPolicy, bool, int]] = {}
        self.id_free_selections: dict[int, tuple[list[CompiledPolicy],
                                                 tuple[CompiledPolicy, ...]]] = {}

    def id_bound(self, selected: list[CompiledPolicy], group: int) -> bool:
        """Whether a verdict over this selection may depend on ``agent.id``: some deny
        expression reads it, and its conjuncts that name no agent were not found false for
        this group (then it is false for every agent, whatever the id). The policies that
        read the id are remembered per list (``select`` returns the same list per labels)."""
        hit = self.id_free_selections.get(id(selected))
        if hit is None or hit[0] is not selected:
            hit = self.id_free_selections[id(selected)] = (
                selected, tuple(p for p in selected if not id_free(p)))
        for p in hit[1]:
            prefix = self.prefixes.get((group, id(p))) if group >= 0 else None
            if prefix is None or prefix[0] is not p or not prefix[1]:
                return True
        return False

    def select(self, req: CheckRequest, agent_labels: Any, device_labels: Any
               ) -> list[CompiledPolicy]:
        """The batch's policy set's selection (``PolicySet.select`` remembers it per labels,
        so agents with the same labels get the same list object)."""
        return self.policies.select(req.tenant, req.checkpoint, req.change, agent_labels,
                                    device_labels)

    def group(self, activation: dict[str, Any]) -> int:
        """Which group of agents with the same non-agent inputs this one belongs to (-1:
        none, its verdicts are not shared)."""
        for i, ref in enumerate(self.groups):
            if ref.keys() == activation.keys() and all(
                    k in _PER_AGENT_VARS or v is ref[k] or _same(v, ref[k])
                    for k, v in activation.items()):
                return i
        if len(self.groups) >= _MAX_GROUPS:
            return -1
        self.groups.append(activation)
        return len(self.groups) - 1

    def is_shareable(self, p: CompiledPolicy) -> bool:
        hit = self.shareable.get(id(p))
        if hit is None or hit[0] is not p:
            hit = self.shareable[id(p)] = (p, _shareable(p))
        return hit[1]


def _same(a: Any, b: Any) -> bool:
    """The same value with the same types all the way down (CEL tells 1 from 1.0 and true,
    Python's ``==`` does not). NaN is never the same: conservative, nothing is shared."""
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if t is list or t is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _shareable_verdict(selected: list[CompiledPolicy], decision: Decision) -> bool:
    """No budget-dependent outcome, and no deny whose message names the agent."""
    denied = decision.reasons + decision.shadow_denies
    if not denied:
        return True
    if any(r.code in BUDGET_CODES for r in denied):
        return False
    names = {r.policy for r in denied}
    return all(message_id_free(p) for p in selected if p.name in names)


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
        self.options = options or EngineOptions()
        self.telemetry = telemetry
        self.notifier = notifier
        # Seen keys -> monotonic time their event was last written (see seen_refresh_s).
        self._configs_seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        # id(shared list of policies_list) -> (that list, its SHA-256): each hashed once.
        self._policy_shas: dict[int, tuple[list[dict[str, Any]], str]] = {}
        self._policies_seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._counter_rule_cache: dict[tuple[int, str],
                                       tuple[CompiledPolicy, CounterRule | str]] = {}
        # Whether the per-decision debug line is wanted, asked once (logging is configured
        # before the engine is made): a filtered-out call still cost ~4 µs per decision.
        self._debug = _debug_enabled()
        # audit_after_answer: decisions answered, their audit events not yet queued (FIFO).
        self._unrecorded: deque[_Pending] = deque()
        self._recording = False

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
        memo = _BatchMemo(self.policies) if len(reqs) > 1 else None
        now = self.options.now() if self.options.now else None
        if memo is not None and now is None:
            now = datetime.now(UTC)  # a step is decided at one instant
        # Agents that differ only in their id share one stateless verdict (buckets.py). Not
        # with per-policy telemetry spans: each agent's policies would have to be traced.
        buckets: dict[Any, _Pending] | None = (
            {} if memo is not None and not self.telemetry.enabled else None)
        ids = new_decision_ids(len(reqs)) if memo is not None else None
        for i, req in enumerate(reqs):
            decision_id = ids[i] if ids is not None else new_decision_id()
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
                await self._record(item.req, d)
            if self.telemetry.enabled:
                self._observe(item.req, d)
            if self.notifier is not None and d.reasons:
                self._notify(item, d)
            out.append(d)
        if later and pending:
            if len(self._unrecorded) > _RECORD_BACKLOG:
                self.record_pending()  # the loop is not keeping up: pay for it here
            self._unrecorded.extend(pending)
            if not self._recording:
                self._recording = True
                asyncio.get_running_loop().call_soon(self._record_later)
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
                     started: float, deadline: Deadline, memo: _BatchMemo | None) -> _Pending:
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
                  started: float, memo: _BatchMemo | None = None,
                  share: bool = False, decision_id: str | None = None) -> _Pending:
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
        decision = Decision(decision_id or new_decision_id(), False, req.checkpoint.value,
                            ctx.now)
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
                and _shareable_verdict(selected, decision):
            shared = Stateless(tuple(decision.reasons), tuple(decision.shadow_denies),
                               tuple(evaluated), tuple(counted), ctx)
        if not decision.reasons and counted:
            self._counter_rules(item, counted, ctx, budget, memo)
            scopes = [p.counter.scope if p.counter is not None else "" for p in counted]
            if shared is not None and not decision.reasons and all(
                    s in BUCKET_SCOPES or s == "agent" for s in scopes):
                per_agent = tuple(s == "agent" for s in scopes)
                shared = replace(shared, rules=tuple(item.rules), by_id=item.by_id,
                                 per_agent=per_agent if any(per_agent) else None)
        item.shared = shared
        return item

    def _evaluate_one(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                      deadline: Deadline, memo: _BatchMemo | None = None,
                      group: int = -1) -> Deny | None:
        if deadline.expired():
            return Deny("DEADLINE_EXCEEDED",
                        "the decision deadline ran out before this policy was evaluated")
        if group >= 0 and memo is not None:
            if memo.is_shareable(p):
                return self._evaluate_shared(p, ctx, budget, memo, group)
            if p.deny is not None and p.stateless is None and p.broken is None \
                    and self._false_for_group(p, ctx, budget, memo, group):
                return None
        return self._evaluate_policy(p, ctx, budget)

    def _false_for_group(self, p: CompiledPolicy, ctx: EvalContext, budget: Budget,
                         memo: _BatchMemo, group: int) -> bool:
        """Whether the agent-free conjuncts of ``p``'s deny expression are false for this
        group of agents (then so is the expression: not denied). Evaluated once per group
        on a budget of its own; each agent is charged its cost, as if it had evaluated it."""
        assert p.deny is not None
        key = (group, id(p))
        hit = memo.prefixes.get(key)
        if hit is None or hit[0] is not p:
            prefix = _agent_free_conjuncts(p.deny.source)
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
                         memo: _BatchMemo, group: int) -> Deny | None:
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
                       ctx: EvalContext, budget: Budget, memo: _BatchMemo | None = None) -> None:
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

    async def _record(self, req: CheckRequest, decision: Decision) -> None:
        await self.audit.log_decision(self._event(req, decision))

    def _record_later(self) -> None:
        """``audit_after_answer``: queue the events of decisions already answered, in the
        order they were decided (one FIFO for the engine), a slice per loop turn: a step's
        thousand records in one callback would hold the loop (and the GIL) for milliseconds
        while other calls wait."""
        try:
            self.record_pending(max(_RECORD_SLICE, len(self._unrecorded) // 4))
        finally:  # whatever happened, the rest is not left behind
            if self._unrecorded:
                asyncio.get_running_loop().call_soon(self._record_later)
            else:
                self._recording = False

    def record_pending(self, limit: int | None = None) -> None:
        """Queue the audit events of (up to ``limit``) answered decisions not yet recorded;
        shutdown calls it before closing the audit log, so none is left behind."""
        todo = self._unrecorded
        for _ in range(len(todo) if limit is None else min(limit, len(todo))):
            item = todo.popleft()
            try:
                for ev in events_for_decision(self._event(item.req, item.decision),
                                              documented=True):
                    self.audit.emit(ev)
            except Exception as exc:  # a defect: say which decision has no record, loudly
                log.critical("audit_record_failed", decision_id=item.decision.decision_id,
                             tenant=item.req.tenant, error=repr(exc))

    def _event(self, req: CheckRequest, decision: Decision) -> dict[str, Any]:
        configs = (self._config_ref(req.tenant, "config", req.config_yaml),
                   self._config_ref(req.tenant, "previous_config", req.previous_config_yaml))
        event = decision_event(req, decision, configs=configs,
                               policies_ref=self._policies_ref(req.tenant, decision.evaluated))
        if self._debug:
            log.debug("decision", decision_id=decision.decision_id, tenant=req.tenant,
                      allowed=decision.allowed, reasons=[r.code for r in decision.reasons],
                      elapsed_ms=round(decision.elapsed_s * 1000, 3))
        return event

    def _config_ref(self, tenant: str, field: str, text: str | None) -> str | None:
        """The SHA-256 (hex) a Decision event names its config by; the text itself goes to
        the audit log once, in a ``Config.Seen`` event, the first time this engine sees it
        (per tenant and field: masking paths are per field, audit readers per tenant)."""
        if not text:
            return None
        sha = self.configs.digest(text).hex()  # hashed once per text object
        if self._first_sight(self._configs_seen, (tenant, field, sha)):
            self.audit.emit(config_seen(tenant, field, sha, text))
        return sha

    def _first_sight(self, seen: OrderedDict[Any, float], key: Any) -> bool:
        """Whether the Seen event for ``key`` must be written now: never written by this
        engine (or forgotten, LRU), or its last copy is older than ``seen_refresh_s``."""
        now = time.monotonic()
        last = seen.get(key)
        if last is not None and now - last < self.options.seen_refresh_s:
            seen.move_to_end(key)
            return False
        seen[key] = now
        seen.move_to_end(key)
        if len(seen) > CONFIGS_SEEN_MAX:
            seen.popitem(last=False)
        return True

    def _policies_ref(self, tenant: str, evaluated: list[PolicyRef]) -> str | None:
        """The SHA-256 (hex) a Decision event names its evaluated policies by; the list goes
        to the audit log once per tenant, in a ``Policies.Seen`` event, before the first
        decision naming it. The list is most of a decision's record otherwise (about 200
        bytes per policy, every decision). None: nothing was evaluated (listed inline)."""
        if not evaluated:
            return None
        listed = policies_list(evaluated)  # one shared list per selection
        hit = self._policy_shas.get(id(listed))
        if hit is None or hit[0] is not listed:
            sha = hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()
            if len(self._policy_shas) >= 1024:
                self._policy_shas.clear()
            hit = self._policy_shas[id(listed)] = (listed, sha)  # held: the id stays valid
        sha = hit[1]
        if self._first_sight(self._policies_seen, (tenant, sha)):
            self.audit.emit(policies_seen(tenant, sha, listed))
        return sha

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


def decision_event(req: CheckRequest, decision: Decision, *,
                   configs: tuple[str | None, str | None] | None = None,
                   policies_ref: str | None = None) -> dict[str, Any]:
    """The audit record of one decision: enough of the request to replay it later.

    With ``configs`` (the SHA-256 of the config and previous config texts) the request names
    them (``config_sha256`` / ``previous_config_sha256``) instead of carrying the texts,
    which the audit log then holds once in ``Config.Seen`` events; without it the texts are
    inline (``config`` / ``previous_config``), the older form replay still reads. With
    ``policies_ref`` the evaluated policies are named (``policies_sha256``, the list is in a
    ``Policies.Seen`` event) instead of listed (``policies``).
    """
    request: dict[str, Any] = {
        "change": req.change, "agent": req.agent, "device": req.device,
        "rollout": req.rollout, "metrics": req.metrics,
    }
    if configs is None:
        request["config"] = req.config_yaml
        request["previous_config"] = req.previous_config_yaml
    else:
        request["config_sha256"], request["previous_config_sha256"] = configs
    agent, device, rollout = req.agent, req.device, req.rollout
    override = req.override
    # Insertion order is the order the record shows (format v3 does not sort keys).
    event: dict[str, Any] = {
        "type": "Decision",
        "time": decision.decided_at.isoformat(),
        "tenant": req.tenant,
        "decision_id": decision.decision_id,
        "checkpoint": decision.checkpoint,
        "allowed": decision.allowed,
        "reasons": [r.to_dict() for r in decision.reasons],
        "shadow_denies": [r.to_dict() for r in decision.shadow_denies],
        "overridden": decision.overridden,
        "override": None if override is None else {
            "actor": override.actor, "justification": override.justification,
            "honoured": decision.overridden, "caller_is_admin": req.caller.is_admin},
        "caller": req.caller.identity,
        "request_id": req.request_id,
        "subject": {
            "agent_id": agent.get("id", "") if agent else "",
            "device_id": device.get("id", "") if device else "",
            "rollout_id": rollout.get("id", "") if rollout else "",
        },
        "elapsed_ms": round(decision.elapsed_s * 1000, 3),
        "request": request,
    }
    if policies_ref is None:
        event["policies"] = policies_list(decision.evaluated)
    else:
        event["policies_sha256"] = policies_ref
    return event
