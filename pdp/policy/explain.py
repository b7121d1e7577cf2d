"""Explanations of denies: the values behind a policy's verdict, as ``{name: text}``.

Called by the engine only for a request that asked for explanations, and only for policies
that denied it, so decisions without ``explain`` pay nothing. CEL rules are re-evaluated in
explain mode (``pdp.cel.explain``); typed rules and built-ins name the offending element and
the values they compared (the same inputs their ``evaluate`` reads).

This module imports only ``pdp.cel`` and ``pdp.policy`` (it sits beside the engine, not
above it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pdp.cel import Budget, Environment, pdp_environment
from pdp.cel.explain import explain_expression, render
from pdp.policy.builtins import (
    ExporterRemoval,
    TlsInsecureRemote,
    _active_exporters,
    _exporters,
    insecure_remote_exporter,
    receiving_exporters,
    removed_exporter,
)
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import CelRule
from pdp.policy.rules import (
    _OPS,
    BASELINE_PREFIX,
    WEEKDAYS,
    AllowedHours,
    AutoRollback,
    BlockedDays,
    CounterSpec,
    DeviceConstraints,
    FreezeWindows,
    MaxStepPercent,
    QualityGate,
    RequireApproval,
    local_time,
)

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
            return explain_expression(env or pdp_environment(), rule.deny, ctx.activation,
                                      budget=budget)
        explainer = _TYPED.get(type(rule))
        if explainer is not None:
            return explainer(rule, ctx)
        if isinstance(rule, CounterSpec):
            return explain_counter(rule)
    except Exception as exc:  # an explanation must never break a decision
        return {"(explanation)": f"cannot explain: {type(exc).__name__}: {exc}"}
    return {}


# ---------------------------------------------------------------- built-ins


def explain_exporter_removal(_: ExporterRemoval, ctx: EvalContext) -> Values:
    found = removed_exporter(ctx)
    if found is None:
        return {}
    exporter, pipeline, source, defined = found
    out = {"exporter": exporter, "source": source,
           "defined": render(defined),
           "receiving": render(sorted(receiving_exporters(ctx.activation.get("config"))))}
    if pipeline:
        out["pipeline"] = pipeline
    if source == "agent.active_exporters":
        out["agent.active_exporters"] = render(_active_exporters(ctx) or [])
    else:
        out["config.exporters"] = render(sorted(
            str(k) for k in _exporters(ctx.activation.get("config"))))
    return out


def explain_tls_insecure(_: TlsInsecureRemote, ctx: EvalContext) -> Values:
    found = insecure_remote_exporter(ctx.activation.get("config"))
    if found is None:
        return {}
    out = {found.section: found.name, "endpoint": found.endpoint, "host": found.host,
           found.setting: found.value, "localhost": "false"}
    return out


# ---------------------------------------------------------------- typed rules


def _local(ctx: EvalContext, tz: Any) -> Values:
    local = local_time(ctx.now, tz)
    return {"now": ctx.now.isoformat(), "local_time": local.strftime("%Y-%m-%d %H:%M"),
            "weekday": WEEKDAYS[local.weekday()], "timezone": str(tz.key)}


def explain_blocked_days(rule: BlockedDays, ctx: EvalContext) -> Values:
    return {**_local(ctx, rule.tz),
            "blocked_days": ",".join(WEEKDAYS[d] for d in sorted(rule.days))}


def explain_allowed_hours(rule: AllowedHours, ctx: EvalContext) -> Values:
    return {**_local(ctx, rule.tz),
            "allowed_hours": f"{rule.start_hour:02d}:00-{rule.end_hour:02d}:00"}


def explain_freeze(rule: FreezeWindows, ctx: EvalContext) -> Values:
    for start, end, reason in rule.windows:
        if start <= ctx.now < end:
            return {"now": ctx.now.isoformat(), "window.start": start.isoformat(),
                    "window.end": end.isoformat(), "window.reason": reason}
    return {"now": ctx.now.isoformat()}


def explain_max_step(rule: MaxStepPercent, ctx: EvalContext) -> Values:
    rollout = ctx.section("rollout")
    pct = rollout.get("step_percent", 0.0)
    prev = rollout.get("previous_step_percent", 0.0)
    out = {"rollout.step_percent": render(pct), "rollout.previous_step_percent": render(prev),
           "max_percent": f"{rule.max_percent:g}"}
    if isinstance(pct, int | float) and isinstance(prev, int | float):
        out["increase"] = f"{pct - prev:g}"
    return out


def explain_approval(rule: RequireApproval, ctx: EvalContext) -> Values:
    rollout = ctx.section("rollout")
    return {"rollout.step": render(rollout.get("step", 0)),
            "rollout.created_by": render(rollout.get("created_by", "")),
            "rollout.approvals": render(rollout.get("approvals") or []),
            "min_approvals": str(rule.min_approvals), "per_step": render(rule.per_step)}


def explain_device(rule: DeviceConstraints, ctx: EvalContext) -> Values:
    device = ctx.section("device")
    platform = device.get("platform", "")
    out = {"device.platform": render(platform)}
    key = platform.strip().lower() if isinstance(platform, str) else ""
    for plat, minimum in rule.min_os_version:
        if plat == key:
            out["device.os_version"] = render(device.get("os_version", ""))
            out["min_os_version"] = minimum
    if rule.min_memory_bytes:
        out["device.memory_bytes"] = render(device.get("memory_bytes", 0))
        out["min_memory_bytes"] = str(rule.min_memory_bytes)
    if rule.allowed_groups:
        out["device.groups"] = render(device.get("groups") or [])
        out["allowed_groups"] = render(sorted(rule.allowed_groups))
    return out


def explain_quality(rule: QualityGate, ctx: EvalContext) -> Values:
    metrics = ctx.section("metrics")
    for c in rule.conditions:
        keys = rule._in_scope(metrics, c)
        if not keys:
            return {"metric": c.metric, "value": "(not measured)", "op": c.op,
                    "keys": render(list(c.keys))}
        if c.op == "exists":
            continue
        for k in keys:
            v = metrics[k]
            if not isinstance(v, int | float) or not _OPS[c.op](v, c.threshold):
                return {"metric": k, "value": render(v), "op": c.op,
                        "threshold": f"{c.threshold:g}"}
    for metric, max_drop in rule.max_drop:
        base, cur = metrics.get(BASELINE_PREFIX + metric), metrics.get(metric)
        out = {"metric": metric, "value": render(cur), "baseline": render(base),
               "max_drop": f"{max_drop:g}"}
        if isinstance(base, int | float) and isinstance(cur, int | float):
            out["drop"] = f"{base - cur:g}"
        return out
    return {}


def explain_rollback(rule: AutoRollback, ctx: EvalContext) -> Values:
    metrics = ctx.section("metrics")
    out: Values = {}
    for metric, limit in rule.thresholds:
        v = metrics.get(metric)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > limit:
            out[f"metrics.{metric}"] = f"{v:g}"
            out[f"max_{metric}"] = f"{limit:g}"
    return out


def explain_counter(rule: CounterSpec, retry_after_s: float | None = None) -> Values:
    """Counter rules deny in the store; say which counter and its parameters."""
    out = {"counter": rule.kind, "scope": rule.scope}
    if rule.max_count:
        out["max_count"] = str(rule.max_count)
    if rule.window_seconds:
        out["window_seconds"] = str(rule.window_seconds)
    if rule.min_interval_seconds:
        out["min_interval_seconds"] = str(rule.min_interval_seconds)
    if rule.threshold_percent:
        out["threshold_percent"] = f"{rule.threshold_percent:g}"
    if retry_after_s is not None:
        out["retry_after_s"] = f"{retry_after_s:g}"
    return out


_TYPED: dict[type, Callable[[Any, EvalContext], Values]] = {
    ExporterRemoval: explain_exporter_removal,
    TlsInsecureRemote: explain_tls_insecure,
    BlockedDays: explain_blocked_days,
    AllowedHours: explain_allowed_hours,
    FreezeWindows: explain_freeze,
    MaxStepPercent: explain_max_step,
    RequireApproval: explain_approval,
    DeviceConstraints: explain_device,
    QualityGate: explain_quality,
    AutoRollback: explain_rollback,
}
