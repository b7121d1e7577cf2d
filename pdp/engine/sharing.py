"""What the agents of one rollout step share when their policies are evaluated.

Why: most policies of a step read nothing that differs between its agents (the config, the
rollout, the change); their verdicts are worked out once per group of agents with the same
such inputs, and a deny expression whose agent-free conjuncts are false is false for every
agent. ``buckets.py`` goes further for agents that differ only in their id.
"""

from __future__ import annotations

import functools
from typing import Any

from pdp.cel import Environment, Program, pdp_environment, read_roots
from pdp.counters import CounterRule
from pdp.engine.buckets import BUDGET_CODES, id_free, message_id_free
from pdp.engine.decision import Decision
from pdp.engine.request import CheckRequest
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import Deny

#: CEL variables whose value differs between the agents of one step (or between calls).
PER_AGENT_VARS = frozenset({"agent", "now"})


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    """One environment for these compilations, made on first use: making one registers
    every function and extension (tens of milliseconds on a slow machine), which inside the
    first step after a start used to take an agent's whole share of the budget."""
    return pdp_environment()


def prepare() -> None:
    """Make the environment now (at start-up), not inside the first step's budget."""
    _environment()


@functools.lru_cache(maxsize=65_536)
def agent_free_conjuncts(source: str) -> Program | None:
    """For ``a && b && agent... && c``: the conjuncts that read no per-agent variable, as
    one program (compiled from the checked tree; see Environment.compile_conjuncts). When it
    is false for a group of agents, the whole expression is false for every agent of it."""
    try:
        return _environment().compile_conjuncts(
            source, lambda reads: not read_roots(reads) & PER_AGENT_VARS)
    except Exception:
        return None


def shareable(p: CompiledPolicy) -> bool:
    """Whether a policy's verdict (and message) can be shared by the agents of one batch
    whose other inputs are the same: it reads no per-agent variable, by what its rule
    declares (typed rules) or what the checker found (CEL). Broken and counter-only
    policies are evaluated per agent."""
    if p.broken is not None or (p.stateless is None and p.deny is None):
        return False
    return not read_roots(p.verdict_reads | p.message_reads) & PER_AGENT_VARS


#: Distinct sets of shared inputs (config, rollout, ...) one batch tracks; agents beyond
#: that are evaluated on their own.
_MAX_GROUPS = 4


class BatchMemo:
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
                    k in PER_AGENT_VARS or v is ref[k] or same(v, ref[k])
                    for k, v in activation.items()):
                return i
        if len(self.groups) >= _MAX_GROUPS:
            return -1
        self.groups.append(activation)
        return len(self.groups) - 1

    def isshareable(self, p: CompiledPolicy) -> bool:
        hit = self.shareable.get(id(p))
        if hit is None or hit[0] is not p:
            hit = self.shareable[id(p)] = (p, shareable(p))
        return hit[1]


def same(a: Any, b: Any) -> bool:
    """The same value with the same types all the way down (CEL tells 1 from 1.0 and true,
    Python's ``==`` does not). NaN is never the same: conservative, nothing is shared."""
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if t is list or t is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def shareable_verdict(selected: list[CompiledPolicy], decision: Decision) -> bool:
    """No budget-dependent outcome, and no deny whose message names the agent."""
    denied = decision.reasons + decision.shadow_denies
    if not denied:
        return True
    if any(r.code in BUDGET_CODES for r in denied):
        return False
    names = {r.policy for r in denied}
    return all(message_id_free(p) for p in selected if p.name in names)
