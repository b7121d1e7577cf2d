"""Compile once, evaluate many: a policy turned into something cheap to run per request.

CEL expressions are compiled through a shared program cache keyed by source hash, so reloading
an unchanged policy costs nothing. A policy that does not compile is kept as a *broken* policy
that denies every request it applies to (fail-closed) with the compile error as the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pdp.cel import (
    Budget,
    CelCompileError,
    CelEvalError,
    CostLimitExceeded,
    Environment,
    Program,
    ProgramCache,
)
from pdp.counters import CounterRule
from pdp.counters.scopes import scope_key
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import CelRule, Policy, PolicyError, PolicyRef, Status
from pdp.policy.rules import CounterSpec, Deny, StatelessRule


@dataclass(frozen=True)
class CompiledPolicy:
    policy: Policy
    content_hash: str
    stateless: StatelessRule | None = None
    deny: Program | None = None
    message: Program | None = None
    counter: CounterSpec | None = None
    scope_program: Program | None = None
    broken: str | None = None  # compile error: the policy denies with this reason

    @property
    def name(self) -> str:
        return self.policy.name

    @functools.cached_property
    def ref(self) -> PolicyRef:
        """Who took part in a decision: built once per compiled policy, not per decision."""
        return PolicyRef(self.policy.name, self.policy.version, self.content_hash,
                         self.policy.status.value, self.policy.builtin)

    @functools.cached_property
    def verdict_reads(self) -> frozenset[str]:
        """What the allow/deny verdict (not its message, not the counters) depends on, as
        CEL variable paths (see pdp.cel.references); ``*`` = unknown, assume everything."""
        if self.broken is not None:
            return frozenset()  # denies every request alike
        if self.stateless is not None:
            return type(self.stateless).reads
        if self.deny is not None:
            return self.deny.reads
        return frozenset()  # a counter rule: decided by the store, per request

    @functools.cached_property
    def message_reads(self) -> frozenset[str]:
        """What a deny's message depends on besides the verdict."""
        return self.message.reads if self.message is not None else frozenset()

    @property
    def shadow(self) -> bool:
        """Drafts (and approved, not yet active versions) never block: would-deny only."""
        return self.policy.status is not Status.ACTIVE

    @property
    def rule_kind(self) -> str:
        return str(getattr(self.policy.rule, "kind", "cel"))

    def evaluate(self, ctx: EvalContext, budget: Budget) -> Deny | None:
        """The policy's verdict on a stateless basis. DeadlineExceeded propagates."""
        if self.broken is not None:
            return Deny("POLICY_INVALID", f"policy does not compile: {self.broken}")
        if self.stateless is not None:
            return self.stateless.evaluate(ctx)
        if self.deny is None:
            return None  # counter rules are reserved later, by the engine
        try:
            result = self.deny.evaluate(ctx.activation, budget=budget)
        except CostLimitExceeded as exc:
            return Deny("COST_LIMIT_EXCEEDED", f"evaluation exceeded its cost budget: {exc}")
        except CelEvalError as exc:
            return Deny("POLICY_ERROR", f"deny expression failed, so the policy denies: {exc}")
        if result is False:
            return None
        if result is not True:
            return Deny("POLICY_ERROR",
                        f"deny expression returned {type(result).__name__}, expected bool")
        return Deny("POLICY_DENIED", self._message(ctx, budget))

    def _message(self, ctx: EvalContext, budget: Budget) -> str:
        default = self.policy.description or f"denied by policy {self.policy.name}"
        if self.message is None:
            return default
        try:
            text = self.message.evaluate(ctx.activation, budget=budget)
        except CostLimitExceeded:
            return default + " (message expression exceeded its cost budget)"
        except CelEvalError as exc:
            return f"{default} (message expression failed: {exc})"
        return text if isinstance(text, str) else str(text)

    def counter_rule(self, scope_key: str) -> CounterRule | str:
        """The store's rule for this policy at ``scope_key``, or why it is invalid."""
        assert self.counter is not None
        try:
            return self.counter.rule(f"{self.name}@v{self.policy.version}", scope_key,
                                     counter_id=self.name)
        except ValueError as exc:
            return str(exc)

    def scope_key(self, ctx: EvalContext, budget: Budget) -> str | None:
        """The counter scope as a string, or None when the request lacks what it needs."""
        assert self.counter is not None
        scope = self.counter.scope
        if scope == "tenant":
            return "tenant"
        if scope == "expression":
            assert self.scope_program is not None
            try:
                value = self.scope_program.evaluate(ctx.activation, budget=budget)
            except CelEvalError:
                return None
            return scope_key("expr", value)
        source = "agent" if scope == "group" else scope
        section = ctx.section(source)
        if scope == "group":
            value = section.get("group") or next(iter(ctx.section("device").get("groups") or []),
                                                 None)
        else:
            value = section.get("id")
        return scope_key(scope, value or None)


def compile_policy(policy: Policy, env: Environment, cache: ProgramCache, *,
                   max_cost: int | None = None) -> CompiledPolicy:
    """Compile ``policy``; raises PolicyError (with line:column of the expression) on failure."""
    rule: Any = policy.rule
    if isinstance(rule, CelRule):
        deny = _compile(env, cache, rule.deny, policy, "rule.cel.deny", max_cost)
        message = None
        if rule.message:
            message = _compile(env, cache, rule.message, policy, "rule.cel.message", max_cost)
        return CompiledPolicy(policy, policy.content_hash, deny=deny, message=message)
    if isinstance(rule, CounterSpec):
        scope_program = None
        if rule.scope_expression is not None:
            scope_program = _compile(env, cache, rule.scope_expression, policy,
                                     f"rule.{rule.kind}.scope.expression", max_cost)
        return CompiledPolicy(policy, policy.content_hash, counter=rule,
                              scope_program=scope_program)
    if isinstance(rule, StatelessRule):
        return CompiledPolicy(policy, policy.content_hash, stateless=rule)
    raise PolicyError(f"unsupported rule {rule!r}", source=policy.source)  # pragma: no cover


def compile_or_broken(policy: Policy, env: Environment, cache: ProgramCache, *,
                      max_cost: int | None = None) -> CompiledPolicy:
    """Like compile_policy, but a compile error yields a policy that denies (fail-closed)."""
    try:
        return compile_policy(policy, env, cache, max_cost=max_cost)
    except PolicyError as exc:
        return CompiledPolicy(policy, policy.content_hash, broken=str(exc))


def _compile(env: Environment, cache: ProgramCache, source: str, policy: Policy,
             field_path: str, max_cost: int | None) -> Program:
    try:
        return cache.get_or_compile(env, source, max_cost=max_cost)
    except CelCompileError as exc:
        raise PolicyError(str(exc), field_path=field_path, source=policy.source) from None
