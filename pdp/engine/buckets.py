"""Agents of one rollout step that differ only in their id share one stateless verdict.

Why: a step asks about a thousand agents that mostly carry the same labels, group and
version, under the same config, rollout and change. Every policy that does not read
``agent.id`` gives each of them the same answer, so the first agent of each bucket is
evaluated in full and the others take its verdict; each keeps its own decision id, counter
reservations (a per-agent cooldown still counts per agent) and audit record.

A bucket is only formed when the answer is certain to be the same: no selected policy's
deny expression reads ``agent.id`` (nor the message of one that denied: messages often name
the agent), the verdict holds no budget-dependent outcome (deadline, cost limit), and the
request did not ask for explanations. The batch is decided at one instant (one
``now``), so clock rules agree too.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from pdp.counters import CounterRule
from pdp.engine.decision import PolicyRef, Reason
from pdp.engine.request import CheckRequest
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext

#: Outcomes that depend on one agent's deadline or budget, not on its inputs: never shared.
BUDGET_CODES = frozenset({"DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED"})


#: Counter scopes whose key is the same for every agent of a bucket (the rollout and the
#: device are shared objects, the group is part of the agent's key); ``agent`` scopes are
#: the bucket's rule at each agent's own id, ``expression`` scopes are worked out per agent.
BUCKET_SCOPES = frozenset({"tenant", "rollout", "device", "group"})


@dataclass(frozen=True, slots=True)
class Stateless:
    """What one agent's stateless phase concluded, before its counter reservation; with
    ``rules`` when every counter scope is one the bucket shares."""

    reasons: tuple[Reason, ...]
    shadow_denies: tuple[Reason, ...]
    evaluated: tuple[PolicyRef, ...]
    counted: tuple[CompiledPolicy, ...]
    ctx: EvalContext
    rules: tuple[CounterRule, ...] | None = None
    by_id: dict[str, CompiledPolicy] = field(default_factory=dict)
    # With ``rules``: which of them are scoped to the agent (``agent:<id>``), so each agent
    # takes the rule at its own scope; None when none is.
    per_agent: tuple[bool, ...] | None = None
    # Drafts that applied (each agent's are evaluated after its answer, in its context).
    shadow: tuple[CompiledPolicy, ...] = ()


def frozen(value: Any) -> Hashable:
    """``value`` as a hashable key that tells apart what CEL tells apart (1, 1.0, true);
    TypeError for values it does not know."""
    t = type(value)
    if t is dict:  # in the dict's order (see _agent_key); keys tagged too: {1: x} != {true: x}
        return ("dict", *((frozen(k), frozen(v)) for k, v in value.items()))
    if t is list or t is tuple:
        return ("list", *(frozen(v) for v in value))
    if t is str or t is int or t is bool or t is float or value is None:
        return (t.__name__, value)  # CEL tells 1 from 1.0 and true: so does the key
    raise TypeError(f"no bucket key for {t.__name__}")


def _agent_key(agent: dict[str, Any]) -> Hashable:
    """Everything but the id, as alternating names and values in the dict's own order (the
    batch conversion builds every agent's dict in one order; two dicts with the same items
    in another order only miss sharing, they never share wrongly). Strings and string maps
    (the usual case) as they are, tagged so a string never equals a map; the rest through
    ``frozen``, which tells 1 from 1.0 and true."""
    out: list[Any] = []
    for k, v in agent.items():
        if k == "id":
            continue
        t = type(v)
        out.append(k)
        if t is str:
            out.append(v)
        elif t is dict and all(type(a) is str and type(b) is str for a, b in v.items()):
            out.append(("map", *v.items()))
        elif t is list and not v:
            out.append(("list",))
        else:
            out.append(("any", frozen(v)))
    return tuple(out)


def request_key(req: CheckRequest) -> Hashable | None:
    """Equal for two requests of one batch exactly when they differ at most in ``agent.id``.

    The parts a batch shares (config text, rollout, change, ...) are the same objects for
    every agent (``convert.check_push_batch_requests``), so they are keyed by identity: the
    batch holds them alive, so an id cannot be reused while the key is in use.
    """
    try:
        agent_part = _agent_key(req.agent or {})
        metrics = frozen(req.metrics) if req.metrics else ()  # a new (empty) dict each
    except TypeError:
        return None
    return (req.tenant, req.checkpoint, req.request_id, req.explain,
            id(req.change), id(req.device), id(req.rollout), metrics,
            id(req.config_yaml), id(req.previous_config_yaml), id(req.override), id(req.caller),
            agent_part)


def reads_agent_id(reads: frozenset[str]) -> bool:
    """Whether an expression that reads ``reads`` may see ``agent.id``: it reads the field,
    or the whole agent (``agent["id"]``, ``agent.exists(...)``, ``string(agent)``)."""
    return "agent" in reads or "agent.id" in reads


def id_free(p: CompiledPolicy) -> bool:
    """Whether ``p``'s verdict (deny or not) cannot depend on ``agent.id``, by what it
    reads (a counter rule's per-agent scope is made per agent anyway; a broken policy
    denies everyone alike). The deny *message* may still name the agent (checked only for
    policies that deny: ``message_id_free``)."""
    return not reads_agent_id(p.verdict_reads)


def message_id_free(p: CompiledPolicy) -> bool:
    return not reads_agent_id(p.message_reads)
