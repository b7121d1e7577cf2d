"""The one spelling of a counter scope key: ``tenant`` or ``<kind>:<value>``.

Counter rules name a scope kind (tenant, rollout, agent, device, group, or a CEL key
expression); the key is what the store counts under. The engine (per decision), the rollout
events (RecordEvent, EvaluateHealth) and the rules all build keys here, so a cooldown set by
an event and one checked by a push can never disagree about the spelling.
"""

from __future__ import annotations

#: Scope kinds whose key carries a value (``tenant`` is the tenant itself).
VALUED = frozenset({"rollout", "agent", "device", "group", "expr"})


def scope_key(kind: str, value: object = None) -> str | None:
    """The key of scope ``kind`` at ``value``; None when a valued scope has no value (the
    request lacks what the rule needs)."""
    if kind == "tenant":
        return "tenant"
    if kind not in VALUED:
        raise ValueError(f"unknown counter scope kind {kind!r}")
    if value is None or value == "":
        return None
    return f"{kind}:{value}"
