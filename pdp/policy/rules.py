"""Typed guardrail rules: parameters, validation and (for stateless ones) evaluation.

Stateless rules (clock, request) answer from the EvalContext alone. Counter rules only describe
what to reserve (``CounterSpec``); the engine reserves them atomically in the counter store once
every stateless policy has allowed, so a denied decision never consumes a slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pdp.cel.domain import compare_versions
from pdp.policy.evalctx import EvalContext
from pdp.policy.params import Params

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SCOPES = ("tenant", "rollout", "agent", "device", "group", "expression")


@dataclass(frozen=True)
class Deny:
    """A rule's verdict against the request: a reason code and a message for operators."""

    code: str
    message: str
    retry_after_s: float | None = None


class StatelessRule:
    kind: ClassVar[str]
    checkpoints_hint: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, ctx: EvalContext) -> Deny | None:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------- clock rules


@dataclass(frozen=True)
class BlockedDays(StatelessRule):
    kind: ClassVar[str] = "blocked_days"
    days: frozenset[int]  # 0 = Monday
    tz: ZoneInfo

    @classmethod
    def parse(cls, p: Params) -> BlockedDays:
        days = set()
        for i, d in enumerate(p.strings("days")):
            if d.lower() not in WEEKDAYS:
                raise p.fail((*p.path, "days", i), f"unknown weekday {d!r}")
            days.add(WEEKDAYS.index(d.lower()))
        if not days:
            raise p.error("days", "required: at least one weekday")
        return cls(frozenset(days), p.timezone())

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        local = ctx.now.astimezone(self.tz)
        if local.weekday() in self.days:
            return Deny("BLOCKED_DAY", f"deployments are blocked on {WEEKDAYS[local.weekday()]}s"
                        f" ({self.tz.key}, local time {local:%Y-%m-%d %H:%M})")
        return None


@dataclass(frozen=True)
class AllowedHours(StatelessRule):
    kind: ClassVar[str] = "allowed_hours"
    start_hour: int
    end_hour: int
    tz: ZoneInfo

    @classmethod
    def parse(cls, p: Params) -> AllowedHours:
        start = p.integer("start_hour", minimum=0, maximum=23)
        end = p.integer("end_hour", minimum=0, maximum=24)
        if start == end % 24:
            raise p.error("end_hour", "must differ from start_hour (the window would be empty)")
        return cls(start, end, p.timezone())

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        local = ctx.now.astimezone(self.tz)
        h = local.hour
        inside = (self.start_hour <= h < self.end_hour) if self.start_hour < self.end_hour else (
            h >= self.start_hour or h < self.end_hour)  # window wraps midnight
        if inside:
            return None
        return Deny("OUTSIDE_ALLOWED_HOURS",
                    f"deployments are allowed only {self.start_hour:02d}:00-{self.end_hour:02d}:00"
                    f" {self.tz.key}; local time is {local:%H:%M}")


@dataclass(frozen=True)
class FreezeWindows(StatelessRule):
    kind: ClassVar[str] = "freeze_windows"
    windows: tuple[tuple[datetime, datetime, str], ...]

    @classmethod
    def parse(cls, p: Params) -> FreezeWindows:
        windows = []
        for w in p.items("windows"):
            start, end = w.timestamp("start"), w.timestamp("end")
            if end <= start:
                raise w.error("end", "must be after start")
            windows.append((start, end, w.string("reason", "")))
            w.reject_unknown()
        if not windows:
            raise p.error("windows", "required: at least one window")
        return cls(tuple(windows))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        for start, end, reason in self.windows:
            if start <= ctx.now < end:
                why = f" ({reason})" if reason else ""
                return Deny("CHANGE_FREEZE",
                            f"change freeze from {start.isoformat()} to {end.isoformat()}{why}",
                            (end - ctx.now).total_seconds())
        return None


# ---------------------------------------------------------------- request rules


@dataclass(frozen=True)
class MaxStepPercent(StatelessRule):
    """Largest *increase* of fleet coverage per step advance (default 100%).

    The increase is ``rollout.step_percent - rollout.previous_step_percent`` (previous defaults
    to 0, so a first step of 30% is an increase of 30 points).
    """

    kind: ClassVar[str] = "max_step_percent"
    max_percent: float = 100.0

    @classmethod
    def parse(cls, p: Params) -> MaxStepPercent:
        return cls(p.number("max_percent", 100.0, minimum=0.0, maximum=100.0))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        rollout = ctx.section("rollout")
        pct = rollout.get("step_percent", 0.0)
        prev = rollout.get("previous_step_percent", 0.0)
        if not isinstance(pct, int | float) or isinstance(pct, bool):
            return None
        if not isinstance(prev, int | float) or isinstance(prev, bool):
            prev = 0.0
        increase = pct - prev
        if increase > self.max_percent + 1e-9:
            return Deny("STEP_TOO_LARGE",
                        f"rollout step goes from {prev:g}% to {pct:g}% of the fleet, an increase"
                        f" of {increase:g} points; at most {self.max_percent:g}% per step is"
                        " allowed")
        return None


@dataclass(frozen=True)
class RequireApproval(StatelessRule):
    kind: ClassVar[str] = "require_approval"
    per_step: bool
    min_approvals: int

    @classmethod
    def parse(cls, p: Params) -> RequireApproval:
        return cls(p.boolean("per_step"), p.integer("min_approvals", 1, minimum=1))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        rollout = ctx.section("rollout")
        step = rollout.get("step", 0)
        author = rollout.get("created_by", "")
        approvers = {
            a.get("actor", "") for a in rollout.get("approvals", []) or []
            if isinstance(a, dict) and a.get("actor") and a.get("actor") != author
            and (not self.per_step or a.get("step", 0) == step)
        }
        if len(approvers) >= self.min_approvals:
            return None
        what = f"step {step}" if self.per_step else "this rollout"
        return Deny("APPROVAL_REQUIRED",
                    f"{what} needs {self.min_approvals} approval(s) from someone other than its"
                    f" author; has {len(approvers)}")


@dataclass(frozen=True)
class DeviceConstraints(StatelessRule):
    kind: ClassVar[str] = "device_constraints"
    min_os_version: tuple[tuple[str, str], ...]
    min_memory_bytes: int
    allowed_groups: frozenset[str]

    @classmethod
    def parse(cls, p: Params) -> DeviceConstraints:
        versions = p.mapping("min_os_version")
        pairs = tuple((str(k), versions.string(str(k))) for k in versions.data)
        return cls(pairs, p.quantity("min_memory", 0), frozenset(p.strings("allowed_groups")))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        device = ctx.section("device")
        platform = str(device.get("platform", "")).lower()
        for plat, minimum in self.min_os_version:
            if plat.lower() == platform:
                have = str(device.get("os_version", ""))
                if not have or compare_versions(have, minimum) < 0:
                    return Deny("DEVICE_CONSTRAINT",
                                f"{platform} {have or '(unknown version)'} is older than the"
                                f" minimum {minimum}")
        if self.min_memory_bytes:
            mem = device.get("memory_bytes", 0)
            if not isinstance(mem, int) or mem < self.min_memory_bytes:
                return Deny("DEVICE_CONSTRAINT",
                            f"device memory {mem} bytes is below the minimum"
                            f" {self.min_memory_bytes} bytes")
        if self.allowed_groups:
            groups = set(device.get("groups", []) or [])
            if not groups & self.allowed_groups:
                return Deny("DEVICE_CONSTRAINT",
                            f"device is in none of the allowed groups"
                            f" {sorted(self.allowed_groups)}")
        return None


_OPS: dict[str, Any] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "=": lambda a, b: a == b, "==": lambda a, b: a == b}
BASELINE_PREFIX = "baseline/"


@dataclass(frozen=True)
class QualityCondition:
    metric: str
    op: str  # one of _OPS or "exists"
    threshold: float = 0.0
    keys: tuple[str, ...] = ()  # fine_grained: only these qualifiers (metric/<key>); () = all


@dataclass(frozen=True)
class QualityGate(StatelessRule):
    """Quality gates over the request's metrics (``CheckRollout.metrics``).

    Metric keys: ``<metric>`` for the latest value of an evaluation, ``<metric>/<qualifier>``
    for finer-grained values (evaluation / task / scorer keys, e.g. ``accuracy/eval-7/qa``),
    and ``baseline/<metric>`` for the baseline the change is compared against.

    * scope ``all_latest``: a condition on ``accuracy`` covers ``accuracy`` and every
      ``accuracy/...`` value; ``fine_grained``: a condition may list ``keys`` (qualifier
      prefixes) to cover only ``accuracy/<key>...``.
    * every value in scope must meet the threshold and at least one must exist.
    * ``min_accuracy: x`` = condition ``accuracy >= x``; ``max_quality_drop: {metric: accuracy,
      max: 0.02}`` (or a number, meaning accuracy) denies when ``baseline/<metric> - <metric>``
      is larger than max, and when either value is missing.
    * ``require_eval`` (default true): the gate blocks until an evaluation has produced the
      metrics and they pass; ``false``: metrics not measured yet do not block (only measured
      values are checked).
    """

    kind: ClassVar[str] = "quality_gate"
    scope: str  # all_latest | fine_grained
    conditions: tuple[QualityCondition, ...]
    max_drop: tuple[tuple[str, float], ...] = ()  # (metric, max drop vs baseline)
    require_eval: bool = True

    @classmethod
    def parse(cls, p: Params) -> QualityGate:
        scope = p.string("scope", "all_latest")
        if scope not in ("all_latest", "fine_grained"):
            raise p.error("scope", "expected all_latest or fine_grained")
        conds: list[QualityCondition] = []
        for c in p.items("conditions"):
            op = c.string("op", ">=")
            if op not in (*_OPS, "exists"):
                raise c.error("op", f"expected one of >, >=, =, <, <=, exists; got {op!r}")
            keys = c.strings("keys")
            if keys and scope != "fine_grained":
                raise c.error("keys", "keys need scope: fine_grained")
            conds.append(QualityCondition(
                c.string("metric"), "=" if op == "==" else op,
                0.0 if op == "exists" else c.number("threshold", minimum=-1e300), keys))
            c.reject_unknown()
        acc = p.optional_number("min_accuracy")
        if acc is not None:
            conds.append(QualityCondition("accuracy", ">=", acc))
        drops: list[tuple[str, float]] = []
        raw = p._get("max_quality_drop", None)
        if isinstance(raw, Mapping):
            dp = p.mapping("max_quality_drop")
            drops.append((dp.string("metric", "accuracy"), dp.number("max")))
            dp.reject_unknown()
        elif raw is not None:
            drops.append(("accuracy", p.number("max_quality_drop")))
        if not conds and not drops:
            raise p.error("conditions", "required: at least one condition")
        return cls(scope, tuple(conds), tuple(drops), p.boolean("require_eval", True))

    def _in_scope(self, metrics: Mapping[str, Any], c: QualityCondition) -> list[str]:
        out = []
        for k in metrics:
            if k == c.metric and not c.keys:
                out.append(k)
            elif k.startswith(c.metric + "/"):
                qualifier = k[len(c.metric) + 1:]
                if not c.keys or any(qualifier == q or qualifier.startswith(q + "/")
                                     for q in c.keys):
                    out.append(k)
        return sorted(out)

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        metrics = ctx.section("metrics")
        for c in self.conditions:
            keys = self._in_scope(metrics, c)
            if not keys:
                if not self.require_eval:
                    continue
                where = f" (keys {list(c.keys)})" if c.keys else ""
                return Deny("QUALITY_GATE_FAILED",
                            f"quality gate failed: metric {c.metric!r}{where} was not measured;"
                            " the rollout is blocked until an evaluation passes")
            if c.op == "exists":
                continue
            for k in keys:
                v = metrics[k]
                if not isinstance(v, int | float) or not _OPS[c.op](v, c.threshold):
                    return Deny("QUALITY_GATE_FAILED",
                                f"quality gate failed: metric {k!r} = {v} (required {c.op}"
                                f" {c.threshold:g})")
        for metric, max_drop in self.max_drop:
            base, cur = metrics.get(BASELINE_PREFIX + metric), metrics.get(metric)
            if not isinstance(base, int | float) or not isinstance(cur, int | float):
                if not self.require_eval:
                    continue
                missing = metric if not isinstance(cur, int | float) else BASELINE_PREFIX + metric
                return Deny("QUALITY_GATE_FAILED",
                            f"quality gate failed: metric {missing!r} was not measured (needed"
                            f" for the max quality drop of {metric!r})")
            if base - cur > max_drop + 1e-12:
                return Deny("QUALITY_GATE_FAILED",
                            f"quality gate failed: metric {metric!r} = {cur:g} dropped"
                            f" {base - cur:g} below its baseline {base:g} (at most {max_drop:g})")
        return None


DEFAULT_MAX_ERROR_RATE = 0.05
DEFAULT_MAX_CRASH_RATE = 0.01


@dataclass(frozen=True)
class AutoRollback(StatelessRule):
    """Thresholds on live metrics; used by EvaluateHealth (any breach = roll back).

    Rates are fractions (0.05 = 5%): ``max_error_rate`` (default 0.05), ``max_crash_rate``
    (default 0.01) and optionally ``max_p95_latency_ms``. A metric the request does not carry
    is not a breach.
    """

    kind: ClassVar[str] = "auto_rollback"
    thresholds: tuple[tuple[str, float], ...] = (
        ("error_rate", DEFAULT_MAX_ERROR_RATE), ("crash_rate", DEFAULT_MAX_CRASH_RATE))

    @classmethod
    def parse(cls, p: Params) -> AutoRollback:
        pairs = [("error_rate", p.number("max_error_rate", DEFAULT_MAX_ERROR_RATE, maximum=1.0)),
                 ("crash_rate", p.number("max_crash_rate", DEFAULT_MAX_CRASH_RATE, maximum=1.0))]
        latency = p.optional_number("max_p95_latency_ms")
        p.seen.add("max_p95_latency_ms")
        if latency is not None:
            pairs.append(("p95_latency_ms", latency))
        return cls(tuple(pairs))

    def breaches(self, ctx: EvalContext) -> list[Deny]:
        metrics = ctx.section("metrics")
        out = []
        for metric, limit in self.thresholds:
            v = metrics.get(metric)
            if isinstance(v, int | float) and not isinstance(v, bool) and v > limit:
                out.append(Deny("HEALTH_THRESHOLD_EXCEEDED",
                                f"metric {metric!r} = {v:g} exceeds the threshold {limit:g}"))
        return out

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        found = self.breaches(ctx)
        return found[0] if found else None


# ---------------------------------------------------------------- counter rules


@dataclass(frozen=True)
class CounterSpec:
    """A counter rule: what the engine reserves in the counter store, and in whose scope."""

    kind: str  # daily_cap | cooldown | velocity | rollback_rate | min_step_duration
    scope: str  # one of SCOPES
    scope_expression: str | None = None
    max_count: int = 0
    window_seconds: int = 0
    min_interval_seconds: int = 0
    timezone: str = "UTC"
    threshold_percent: float = 0.0
    min_deployments: int = 0

    @classmethod
    def parse_scope(cls, p: Params, default: str) -> tuple[str, str | None]:
        raw = p._get("scope", default)
        if isinstance(raw, Mapping):
            sp = Params(raw, p.fail, (*p.path, "scope"))
            expr = sp.string("expression")
            sp.reject_unknown()
            return "expression", expr
        if raw not in SCOPES or raw == "expression":
            raise p.error("scope", f"expected one of tenant, rollout, agent, device, group or"
                                   f" {{expression: <CEL>}}, got {raw!r}")
        return str(raw), None


def _parse_counter(kind: str, p: Params) -> CounterSpec:
    if kind == "daily_cap":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        return CounterSpec(kind, scope, expr, max_count=p.integer("max_count", minimum=1),
                           timezone=p.timezone().key)
    if kind == "cooldown":
        scope, expr = CounterSpec.parse_scope(p, "agent")
        return CounterSpec(kind, scope, expr,
                           min_interval_seconds=60 * p.integer("minutes", minimum=1))
    if kind == "velocity":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        return CounterSpec(kind, scope, expr, max_count=p.integer("max_count", minimum=1),
                           window_seconds=60 * p.integer("window_minutes", minimum=1))
    if kind == "rollback_rate":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        return CounterSpec(kind, scope, expr,
                           threshold_percent=p.number("threshold_percent", maximum=100.0),
                           window_seconds=3600 * p.integer("window_hours", minimum=1),
                           min_deployments=p.integer("min_deployments", 1, minimum=1))
    # min_step_duration: always per rollout
    return CounterSpec(kind, "rollout", None,
                       min_interval_seconds=60 * p.integer("minutes", minimum=1))


STATELESS: dict[str, Any] = {r.kind: r for r in (
    BlockedDays, AllowedHours, FreezeWindows, MaxStepPercent, RequireApproval,
    DeviceConstraints, QualityGate, AutoRollback)}
COUNTERS = ("daily_cap", "cooldown", "velocity", "rollback_rate", "min_step_duration")
TYPED_KINDS = (*STATELESS, *COUNTERS)


def parse_typed(kind: str, p: Params) -> StatelessRule | CounterSpec:
    """Parse one typed rule's parameters; raises PolicyError naming the bad field."""
    rule: StatelessRule | CounterSpec
    rule = _parse_counter(kind, p) if kind in COUNTERS else STATELESS[kind].parse(p)
    p.reject_unknown()
    return rule
