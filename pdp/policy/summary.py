"""One readable line per policy, for `pdp policy summary`: what an operator is protected by."""

from __future__ import annotations

from pdp.policy import rules
from pdp.policy.model import CelRule, Policy

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _scope(spec: rules.CounterSpec) -> str:
    return f"expression {spec.scope_expression}" if spec.scope == "expression" else spec.scope


def describe_rule(rule: object) -> str:
    """The rule's parameters in words (falls back to the rule's kind)."""
    r = rule
    if isinstance(r, CelRule):
        if r.violations:
            return "deny for each of " + " ".join(r.violations.split())
        return "deny when " + " ".join(r.deny.split())
    if isinstance(r, rules.MaxStepPercent):
        return f"a rollout step may grow by at most {r.max_percent:g}% of the fleet"
    if isinstance(r, rules.RequireApproval):
        what = "every step" if r.per_step else "every rollout"
        return f"{what} needs {r.min_approvals} approval(s) by someone other than its author"
    if isinstance(r, rules.DeviceConstraints):
        parts = [f"{plat} >= {v}" for plat, v in r.min_os_version]
        if r.min_memory_bytes:
            parts.append(f"memory >= {r.min_memory_bytes / 1e9:g} GB")
        if r.allowed_groups:
            parts.append("groups " + ", ".join(sorted(r.allowed_groups)))
        return "devices need " + "; ".join(parts or ["nothing"])
    if isinstance(r, rules.QualityGate):
        conds = [f"{c.metric} {c.op}" + ("" if c.op == "exists" else f" {c.threshold:g}")
                 for c in r.conditions]
        return f"quality gate ({r.scope}): " + ", ".join(conds)
    if isinstance(r, rules.BlockedDays):
        return (f"no deployments on {', '.join(_WEEKDAYS[d] for d in sorted(r.days))}"
                f" ({r.tz.key})")
    if isinstance(r, rules.AllowedHours):
        return f"deployments only {r.start_hour:02d}:00-{r.end_hour:02d}:00 {r.tz.key}"
    if isinstance(r, rules.FreezeWindows):
        return "change freezes: " + "; ".join(
            f"{s.isoformat()} to {e.isoformat()}" + (f" ({why})" if why else "")
            for s, e, why in r.windows)
    if isinstance(r, rules.CounterSpec):
        if r.kind == "daily_cap":
            return f"at most {r.max_count} per day ({r.timezone}) per {_scope(r)}"
        if r.kind == "cooldown":
            return (f"at least {r.min_interval_seconds // 60} min between deployments per"
                    f" {_scope(r)}")
        if r.kind == "velocity":
            return (f"at most {r.max_count} in any {r.window_seconds // 60} min per"
                    f" {_scope(r)}")
        if r.kind == "rollback_rate":
            return (f"no new rollouts while rollbacks exceed {r.threshold_percent:g}% of"
                    f" deployments over {r.window_seconds // 3600} h (per {_scope(r)})")
        return f"at least {r.min_interval_seconds // 60} min between step advances"
    auto = getattr(rules, "AutoRollback", None)
    if auto is not None and isinstance(r, auto):
        return "auto-rollback when " + ", ".join(
            f"{m} > {v:g}" for m, v in getattr(r, "thresholds", ()))
    return str(getattr(r, "kind", type(r).__name__)).replace("_", " ") + ": " + ", ".join(
        f"{k}={v}" for k, v in vars(r).items() if not k.startswith("_")) if hasattr(
        r, "__dict__") else str(getattr(r, "kind", r))


def describe_policy(policy: Policy) -> str:
    """The description for CEL policies (their expression is code), the parameters otherwise."""
    where = ", ".join(sorted(c.value for c in policy.checkpoints)) or "all checkpoints"
    text = (policy.description.strip() if isinstance(policy.rule, CelRule)
            and policy.description.strip() else describe_rule(policy.rule))
    return f"{text} [{where}]" + (" (disabled)" if not policy.enabled else "")
