"""Explanations of denies: the values behind a policy's verdict, as ``{name: text}``.

Called by the engine only for a request that asked for explanations, and only for policies
that denied it, so decisions without ``explain`` pay nothing. CEL rules are re-evaluated in
explain mode (``pdp.cel.explain``); typed rules and built-ins explain themselves
(``StatelessRule.explain``: the offending element and the values they compared, from the
same inputs their ``evaluate`` reads), so a new rule type is explained by its own module.

This module imports only ``pdp.cel`` and ``pdp.policy`` (it sits beside the engine, not
above it).
"""

from __future__ import annotations

from typing import Any

from pdp.cel import Budget, Environment, pdp_environment
from pdp.cel import ast as A
from pdp.cel.explain import explain_expression, parsed, render
from pdp.cel.runtime import Deferred
from pdp.cel.unparse import unparse
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import CelRule
from pdp.policy.rules import CounterSpec, StatelessRule

Values = dict[str, str]


def explain_policy(p: CompiledPolicy, ctx: EvalContext, code: str = "",
                   env: Environment | None = None, *, budget: Budget | None = None) -> Values:
    """Why ``p`` denied the request of ``ctx`` (``code`` is the deny's reason code).

    ``budget``: what is left of the decision's own (an explanation is part of the answer,
    so it gets no fresh budget of its own); None = the explainer's default."""
    if p.broken is not None:
        return {"error": p.broken}
    if code in ("POLICY_ERROR", "COST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"):
        return {"code": code}
    rule: Any = p.policy.rule
    try:
        if isinstance(rule, CelRule):
            return explain_cel(p, rule, ctx, env, budget)
        if isinstance(rule, StatelessRule):
            return rule.explain(ctx)
        if isinstance(rule, CounterSpec):
            return explain_counter(rule)
    except Exception as exc:  # an explanation must never break a decision
        return {"(explanation)": f"cannot explain: {type(exc).__name__}: {exc}"}
    return {}


def explain_cel(p: CompiledPolicy, rule: CelRule, ctx: EvalContext, env: Environment | None,
                budget: Budget | None) -> Values:
    """The deny expression's deciding values; for a violations rule, the list it gave. The
    values of the rule's variables come first, as ``variables.NAME``."""
    activation = p.activation(ctx, budget)
    out: Values = {}
    values = activation.get("variables")
    if isinstance(values, dict):
        out.update({f"variables.{k}": render(v) for k, v in values.items()
                    if not isinstance(v, Deferred)})
    if p.violations is not None:
        out["violations"] = render(p.violations.evaluate(activation, budget=budget))
        condition = _violation_condition(p.env or env or pdp_environment(), p.violations.source,
                                         p.rule_tree)
        if condition is not None:  # the offending element and the values that made it one
            out.update(explain_expression(p.env or env or pdp_environment(),
                                          unparse(condition), activation, budget=budget,
                                          tree=condition))
        return out
    out.update(explain_expression(p.env or env or pdp_environment(), rule.deny, activation,
                                  budget=budget, tree=p.rule_tree))
    return out


def _violation_condition(env: Environment, source: str, tree: A.Expr | None = None
                         ) -> A.Comprehension | None:
    """For ``r.transformList(k, v, cond, msg)`` / ``r.map(x, cond, msg)`` (the usual shape
    of a violations list): ``r.exists(k, v, cond)``, whose explanation names the element."""
    if tree is None:
        tree = parsed(env, source)
    if not (isinstance(tree, A.Comprehension) and len(tree.args) == 2
            and tree.kind in ("transformList", "transformMap", "map")):
        return None
    return A.Comprehension(tree.offset, "exists", tree.range, tree.var, tree.var2,
                           [tree.args[0]])


def explain_counter(rule: CounterSpec, retry_after_s: float | None = None) -> Values:
    """Counter rules deny in the store; say which counter and its parameters."""
    return rule.explain(retry_after_s)
