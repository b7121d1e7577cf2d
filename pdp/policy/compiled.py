"""Compile once, evaluate many: a policy turned into something cheap to run per request.

CEL expressions are compiled through a shared program cache keyed by source hash, so reloading
an unchanged policy costs nothing. A policy that does not compile is kept as a *broken* policy
that denies every request it applies to (fail-closed) with the compile error as the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdp.cel import (
    MAX_NODES,
    Budget,
    CelCompileError,
    CelEvalError,
    CostLimitExceeded,
    Environment,
    Program,
    ProgramCache,
    count_nodes,
    read_roots,
)
from pdp.cel import ast as A
from pdp.cel.runtime import Deferred
from pdp.cel.types import T, object_of
from pdp.counters import CounterRule
from pdp.counters.scopes import scope_key
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import CelRule, Policy, PolicyError, PolicyRef, Status
from pdp.policy.rules import CounterSpec, Deny, StatelessRule

#: Activation variables that follow from the request's configs alone (``collector`` is the
#: collector view of ``config``).
CONFIG_ONLY = frozenset({"config", "previous_config", "collector"})

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
    violations: Program | None = None  # a list of messages, one reason each
    variables: tuple[tuple[str, Program], ...] = ()  # evaluated once per decision, in order
    env: Environment | None = None  # what the CEL rule compiled against (with its variables)
    #: The CEL rule's deny (or violations) expression, parsed: explanations walk it, and a
    #: rule of 1 000 nodes takes ~10 ms to parse, too long to do again inside a decision.
    rule_tree: A.Expr | None = dataclasses.field(default=None, compare=False, repr=False)
    #: A cooldown or velocity rule: the longest window of any version of this policy the
    #: policy set holds (its drafts), when longer than this one's. Its counter keeps
    #: pushes that long, so activating the longer version sees those made before
    #: (``CounterRule.history_seconds``; set by ``PolicySet``).
    counter_history_s: int = 0

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
        if self.violations is not None:  # the messages are the verdict
            return self._through_variables(self.violations.reads)
        if self.deny is not None:
            return self._through_variables(self.deny.reads)
        return frozenset()  # a counter rule: decided by the store, per request

    @functools.cached_property
    def config_keyed(self) -> tuple[str, ...] | None:
        """For a rule whose verdict follows from the parsed configs plus a few fields
        (``agent.active_exporters``): those fields, so its verdict may be worked out once per
        config and fields (parsed configs are cached and never mutated). A typed rule
        qualifies by what it declares it reads; a CEL rule when its verdict, its message and
        its variables read nothing but the configs (and their collector view), or nothing
        at all: CEL is deterministic, so a costly expression over one config (a fleet pushes
        the same config to every agent) is paid once, not per request. None for the rest
        (whole sections and the clock change per request)."""
        if self.broken is not None:
            return None
        if self.stateless is None:
            if self.deny is None and self.violations is None:
                return None  # a counter rule: decided by the store, per request
            reads = self.verdict_reads | self.message_reads
            return () if read_roots(reads) <= CONFIG_ONLY else None
        extra = self.verdict_reads - {"config", "previous_config"}
        if extra == self.verdict_reads or not all("." in r for r in extra):
            return None
        return tuple(sorted(extra))

    @functools.cached_property
    def message_reads(self) -> frozenset[str]:
        """What a deny's message depends on besides the verdict."""
        if self.message is None:
            return frozenset()
        return self._through_variables(self.message.reads)

    def _through_variables(self, reads: frozenset[str]) -> frozenset[str]:
        """``reads`` with ``variables.*`` replaced by what the variables read (all of
        them: every variable is evaluated, whichever the expression names)."""
        if not self.variables:
            return reads
        out = {r for r in reads if read_roots(frozenset({r})) != {"variables"}}
        for _, prog in self.variables:
            out |= {r for r in prog.reads if not r.startswith("variables")}
        return frozenset(out)

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
        if self.deny is None and self.violations is None:
            return None  # counter rules are reserved later, by the engine
        try:
            activation = self.activation(ctx, budget)
            if self.violations is not None:
                return _violations(self.violations.evaluate(activation, budget=budget))
            assert self.deny is not None
            result = self.deny.evaluate(activation, budget=budget)
        except CostLimitExceeded as exc:
            return Deny("COST_LIMIT_EXCEEDED", f"evaluation exceeded its cost budget: {exc}")
        except CelEvalError as exc:
            what = "violations" if self.violations is not None else "deny"
            return Deny("POLICY_ERROR", f"{what} expression failed, so the policy denies: {exc}")
        if result is False:
            return None
        if result is not True:
            return Deny("POLICY_ERROR",
                        f"deny expression returned {type(result).__name__}, expected bool")
        return Deny("POLICY_DENIED", self._message(activation, budget))

    def activation(self, ctx: EvalContext, budget: Budget | None = None) -> Mapping[str, Any]:
        """The request's activation, plus ``variables`` when the rule has any: each
        evaluated once, in order; one that fails holds its error, raised where it is read.
        Cost and deadline errors propagate (they are the decision's, not the variable's)."""
        if not self.variables:
            return ctx.activation
        values: dict[str, Any] = {}
        activation = dict(ctx.activation)
        activation["variables"] = values
        for name, prog in self.variables:
            try:
                values[name] = prog.evaluate(activation, budget=budget)
            except CelEvalError as exc:
                values[name] = Deferred(CelEvalError(f"variable {name}: {exc}"))
        return activation

    def _message(self, activation: Mapping[str, Any], budget: Budget) -> str:
        default = self.policy.description or f"denied by policy {self.policy.name}"
        if self.message is None:
            return default
        try:
            text = self.message.evaluate(activation, budget=budget)
        except CostLimitExceeded:
            return default + " (message expression exceeded its cost budget)"
        except CelEvalError as exc:
            return f"{default} (message expression failed: {exc})"
        return text if isinstance(text, str) else _text(text)  # CEL's form, not a repr

    def counter_rule(self, scope_key: str) -> CounterRule | str:
        """The store's rule for this policy at ``scope_key``, or why it is invalid.

        A shadow policy (draft, approved-not-active) counts in a counter of its own
        (:func:`shadow_counter_id`): its would-denies then follow the pushes it has seen,
        and the live counters of the same name are never read or consumed by it."""
        assert self.counter is not None
        counter_id = (shadow_counter_id(self.name, self.policy.version) if self.shadow
                      else self.name)
        try:
            return self.counter.rule(f"{self.name}@v{self.policy.version}", scope_key,
                                     counter_id=counter_id,
                                     history_seconds=0 if self.shadow else self.counter_history_s)
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


def shadow_counter_id(name: str, version: int) -> str:
    """The stored counter of version ``version`` of a shadow policy named ``name``: ``#`` is
    not allowed in policy names, so it is never a live policy's counter; per version, so a
    draft and an approved version of one policy, evaluated side by side, do not count each
    push twice in one counter."""
    return f"{name}@v{version}#shadow"


def compile_policy(policy: Policy, env: Environment, cache: ProgramCache, *,
                   max_cost: int | None = None) -> CompiledPolicy:
    """Compile ``policy``; raises PolicyError (with line:column of the expression) on failure."""
    rule: Any = policy.rule
    if isinstance(rule, CelRule):
        return _compile_cel(policy, rule, env, cache, max_cost)
    if isinstance(rule, CounterSpec):
        scope_program = None
        if rule.scope_expression is not None:
            path = f"rule.{rule.kind}.scope.expression"
            try:
                scope_program = cache.get_or_compile(env, rule.scope_expression,
                                                     max_cost=max_cost)
            except CelCompileError as exc:  # placed in the file as a CEL rule's expressions
                located = dataclasses.replace(policy, rule=CelRule(
                    deny=rule.scope_expression, locations=rule.locations))
                raise compile_error(exc, located, path) from None
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


#: At most this many violations become reasons; the last one says how many more there were.
MAX_VIOLATIONS = 100


def _violations(result: Any) -> Deny | None:
    """A violations expression's value as a deny (None for an empty list)."""
    if not isinstance(result, list | tuple):
        return Deny("POLICY_ERROR", f"violations expression returned {type(result).__name__},"
                                    " expected a list of strings")
    if not result:
        return None
    texts = tuple(v if isinstance(v, str) else _text(v) for v in result[:MAX_VIOLATIONS])
    omitted = len(result) - len(texts)
    summary = texts[0] if len(result) == 1 else f"{texts[0]} (and {len(result) - 1} more)"
    return Deny("POLICY_DENIED", summary, violations=texts, omitted=omitted)


def _text(v: Any) -> str:
    from pdp.cel.explain import render

    return render(v)


def _compile_cel(policy: Policy, rule: CelRule, env: Environment, cache: ProgramCache,
                 max_cost: int | None) -> CompiledPolicy:
    """Variables first, each against the ones before it (typed by what they evaluate to),
    then deny / violations / message against all of them."""
    trees = _check_size(policy, rule, env)
    variables: list[tuple[str, Program]] = []
    scope = env
    names = [n for n, _ in rule.variables]
    for i, (name, source) in enumerate(rule.variables):
        try:
            prog = _compile(scope, cache, source, policy, f"rule.cel.variables.{name}",
                            max_cost)
        except PolicyError as exc:
            later = [n for n in names[i:] if re.search(rf"\bvariables\.{n}\b", source)]
            if later:  # "undeclared reference to 'variables'" would not say why
                what = "itself" if later[0] == name else f"variables.{later[0]}"
                raise PolicyError(f"reads {what}, defined at or after it: a variable reads"
                                  f" only the ones before it ({exc.problem})",
                                  field_path=exc.field_path, source=exc.source,
                                  line=exc.line, column=exc.column) from None
            raise
        variables.append((name, prog))
        scope = _with_variables(env, tuple((n, p.result_type) for n, p in variables))
    deny = violations = message = None
    if rule.violations is not None:
        violations = _compile(scope, cache, rule.violations, policy, "rule.cel.violations",
                              max_cost)
        _result_is(policy, rule, "rule.cel.violations", violations, ("list",),
                   "a list of strings")
    else:
        deny = _compile(scope, cache, rule.deny, policy, "rule.cel.deny", max_cost)
        _result_is(policy, rule, "rule.cel.deny", deny, ("bool",), "a bool")
    if rule.message:
        message = _compile(scope, cache, rule.message, policy, "rule.cel.message", max_cost)
        _result_is(policy, rule, "rule.cel.message", message, ("string",), "a string")
    return CompiledPolicy(policy, policy.content_hash, deny=deny, message=message,
                          violations=violations, variables=tuple(variables), env=scope,
                          rule_tree=trees.get("rule.cel.violations" if rule.violations
                                              is not None else "rule.cel.deny"))


def _result_is(policy: Policy, rule: CelRule, path: str, prog: Program, kinds: tuple[str, ...],
               what: str) -> None:
    """An expression whose type the checker knows to be another than its field needs is
    refused at admission: ``deny: '"yes"'`` loaded, then denied every request it applied
    to with POLICY_ERROR. (``dyn``, e.g. a config value, is checked when evaluated.)"""
    kind = prog.result_type.kind
    if kind in kinds or kind == "dyn":
        return
    raise _at(policy, rule, path, f"must evaluate to {what}; this expression is"
              f" {prog.result_type}")


#: Variables of one CEL rule, and nodes of all its expressions together. Compiling runs on
#: the event loop (admission, start-up, store updates) and each variable is compiled against
#: a record of the ones before it: 5 000 variables took 27 s. The parser bounds one
#: expression (MAX_NODES); these bound a policy.
MAX_VARIABLES = 100
MAX_POLICY_NODES = 2 * MAX_NODES


def _check_size(policy: Policy, rule: CelRule, env: Environment) -> dict[str, A.Expr]:
    """Refuses a rule over the limits; returns its expressions' trees by field path."""
    if len(rule.variables) > MAX_VARIABLES:
        name = rule.variables[MAX_VARIABLES][0]
        raise _at(policy, rule, f"rule.cel.variables.{name}", f"more than {MAX_VARIABLES}"
                  " variables (the limit)")
    total = 0
    trees: dict[str, A.Expr] = {}
    for path, source in [*((f"rule.cel.variables.{n}", src) for n, src in rule.variables),
                         ("rule.cel.deny", rule.deny), ("rule.cel.violations", rule.violations),
                         ("rule.cel.message", rule.message)]:
        if not source:
            continue
        try:
            trees[path] = env.parse(source)
        except CelCompileError as exc:
            raise compile_error(exc, policy, path) from None
        total += count_nodes(trees[path])
        if total > MAX_POLICY_NODES:
            raise _at(policy, rule, path, f"the rule's expressions have more than"
                      f" {MAX_POLICY_NODES} nodes together (the limit); split the policy")
    return trees


def _at(policy: Policy, rule: CelRule, field_path: str, problem: str) -> PolicyError:
    loc = rule.locations.get(field_path)
    if loc is None:
        return PolicyError(problem, field_path=field_path, source=policy.source)
    line, column = loc.position("", 0)
    return PolicyError(problem, field_path=field_path, source=loc.file, line=line,
                       column=column)


_SCOPES: dict[tuple[int, tuple[tuple[str, T], ...]], tuple[Environment, Environment]] = {}


def _with_variables(env: Environment, types: tuple[tuple[str, T], ...]) -> Environment:
    """``env`` plus ``variables`` declared as a record of ``types`` (so ``variables.nme`` is
    a compile error naming ``name``); one per set of variable types, shared by policies."""
    key = (id(env), types)
    hit = _SCOPES.get(key)
    if hit is not None and hit[0] is env:
        return hit[1]
    scope = copy.copy(env)
    scope.decls = dict(env.decls)
    scope.declare("variables", object_of("variables", **dict(types)))
    if len(_SCOPES) >= 4096:
        _SCOPES.clear()
    _SCOPES[key] = (env, scope)
    return scope


def _compile(env: Environment, cache: ProgramCache, source: str, policy: Policy,
             field_path: str, max_cost: int | None) -> Program:
    try:
        return cache.get_or_compile(env, source, max_cost=max_cost)
    except CelCompileError as exc:
        raise compile_error(exc, policy, field_path) from None


def compile_error(exc: CelCompileError, policy: Policy, field_path: str) -> PolicyError:
    """A CEL compile error as a policy error at the file line and column inside the
    expression (where the YAML loader recorded it), with the expression's line and a caret."""
    rule: Any = policy.rule
    loc = rule.locations.get(field_path) if isinstance(rule, CelRule) else None
    if loc is None or exc.offset < 0:
        return PolicyError(str(exc), field_path=field_path, source=policy.source)
    line, column = loc.position(exc.source, exc.offset)
    lines = exc.source.split("\n")
    text = lines[exc.line - 1] if 0 < exc.line <= len(lines) else ""
    snippet = f"{exc.message}\n | {text}\n | {'.' * (exc.column - 1)}^"
    return PolicyError(snippet, field_path=field_path, source=loc.file, line=line,
                       column=column)
