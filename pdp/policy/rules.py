"""Typed guardrail rules: parameters, validation and (for stateless ones) evaluation.

Stateless rules (clock, request) answer from the EvalContext alone. Counter rules only describe
what to reserve (``CounterSpec``); the engine reserves them atomically in the counter store once
every stateless policy has allowed, so a denied decision never consumes a slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pdp.cel import CelError
from pdp.cel.domain import compare_versions
from pdp.cel.explain import render
from pdp.counters import CounterKind, CounterRule
from pdp.counters.settings import DEFAULT_EVENT_RETENTION_SECONDS
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.params import Params

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SCOPES = ("tenant", "rollout", "agent", "device", "group", "expression")


@dataclass(frozen=True)
class Deny:
    """A rule's verdict against the request: a reason code and a message for operators."""

    code: str
    message: str
    retry_after_s: float | None = None
    # A CEL ``violations`` rule: one message per offending element (the engine gives one
    # reason each; ``message`` sums them up for single-reason paths), and how many more
    # there were than it keeps.
    violations: tuple[str, ...] = ()
    omitted: int = 0


class StatelessRule:
    """A typed rule: a verdict from the request alone (no counters).

    ``reads`` declares what of the request the rule looks at, as CEL variable paths
    (``rollout``, ``agent.active_exporters``, ``now`` for the clock): the engine shares a
    verdict between requests (the agents of one step) only when they agree on all of it,
    and a test checks every rule against what it really reads (tests/policy)."""

    kind: ClassVar[str]
    reads: ClassVar[frozenset[str]]
    #: The request section without which the rule does not apply at all (it allows): the
    #: device constraints where no device is named, a quality gate without metrics.
    needs_facts: ClassVar[str | None] = None
    checkpoints_hint: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, ctx: EvalContext) -> Deny | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        """The values behind a deny (the offending element, what it was compared with),
        for requests that asked for explanations; it reads what ``evaluate`` reads."""
        return {}


def _shown(value: Any, limit: int = 64) -> str:
    """A request value in a message: repr, cut short (requests are not trusted to be small)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _local(ctx: EvalContext, tz: ZoneInfo) -> dict[str, str]:
    local = local_time(ctx.now, tz)
    return {"now": ctx.now.isoformat(), "local_time": local.strftime("%Y-%m-%d %H:%M"),
            "weekday": WEEKDAYS[local.weekday()], "timezone": str(tz.key)}


def local_time(now: datetime, tz: ZoneInfo) -> datetime:
    """``now`` on the wall clock of ``tz``. A naive ``now`` is taken as UTC: converting it
    as it is would use the host's own zone."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    try:
        return now.astimezone(tz)
    except OverflowError:  # only a pinned clock gets there
        raise OutsideCalendar(f"the local time in {tz.key} at {now.isoformat()} is outside"
                              " the calendar (years 1-9999)") from None


class OutsideCalendar(ValueError):
    """A local time outside years 1-9999: the rule cannot be applied (denied, saying so)."""


def wall(local: datetime) -> str:
    """``01:30 (UTC-04:00)``: the wall clock with its offset, which tells the two 01:30s of
    a night the clocks go back apart."""
    off = local.utcoffset() or timedelta(0)
    sign, secs = ("-", -off) if off < timedelta(0) else ("+", off)
    hours, rest = divmod(int(secs.total_seconds()), 3600)
    return f"{local:%H:%M} (UTC{sign}{hours:02d}:{rest // 60:02d})"


#: Clock rules change their verdict only at a local hour (or day) boundary, and every zone's
#: offset today is a multiple of 15 minutes: stepping UTC quarter hours finds the boundary.
_STEP = timedelta(minutes=15)
_HORIZON = 8 * 24 * 4  # steps: a week and a day


def next_allowed(now: datetime, allows: Any) -> float | None:
    """Seconds from ``now`` to the first instant ``allows(local_instant)`` holds (None if
    not within a week): a retry hint that follows DST, since it tests real instants."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    try:
        t = now.astimezone(UTC)
        t = t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)
        before = now
        for _ in range(_HORIZON):
            t += _STEP
            if allows(t):
                # Boundaries fall on UTC quarter hours in today's zones, but not always
                # (transitions at 00:01 local, offsets like -00:44:30): the first allowed
                # second after the last refused instant, by halving the quarter hour.
                lo, hi = before, t
                while (hi - lo).total_seconds() > 1:
                    mid = lo + (hi - lo) / 2
                    mid = mid.replace(microsecond=0) if mid.microsecond else mid
                    if mid <= lo:
                        break
                    if allows(mid):
                        hi = mid
                    else:
                        lo = mid
                return max(0.0, (hi - now).total_seconds())
            before = t
    except OverflowError:  # the search left years 1-9999 (only a pinned clock gets there)
        return None
    return None


# ---------------------------------------------------------------- clock rules
#
# Clock rules read the local wall clock of their zone: a day is the local calendar day (23
# or 25 hours long across a DST change), an hour the local hour (an hour a DST jump skips
# does not happen that day; an hour that repeats is allowed or blocked both times).


@dataclass(frozen=True)
class BlockedDays(StatelessRule):
    kind: ClassVar[str] = "blocked_days"
    reads: ClassVar[frozenset[str]] = frozenset({"now"})
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
        local = local_time(ctx.now, self.tz)
        if local.weekday() in self.days:
            return Deny("BLOCKED_DAY", f"deployments are blocked on {WEEKDAYS[local.weekday()]}s"
                        f" ({self.tz.key}, local time {local:%Y-%m-%d} {wall(local)})",
                        retry_after_s=next_allowed(ctx.now, self._allows))
        return None

    def _allows(self, t: datetime) -> bool:
        return t.astimezone(self.tz).weekday() not in self.days

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        return {**_local(ctx, self.tz),
                "blocked_days": ",".join(WEEKDAYS[d] for d in sorted(self.days))}


@dataclass(frozen=True)
class AllowedHours(StatelessRule):
    kind: ClassVar[str] = "allowed_hours"
    reads: ClassVar[frozenset[str]] = frozenset({"now"})
    start_hour: int
    end_hour: int
    tz: ZoneInfo

    @classmethod
    def parse(cls, p: Params) -> AllowedHours:
        """start_hour 0-23, end_hour 0-24 (exclusive); end before start wraps midnight;
        0 -> 24 is the whole day. Equal hours are refused: empty or all day, unclear."""
        start = p.integer("start_hour", minimum=0, maximum=23)
        end = p.integer("end_hour", minimum=0, maximum=24)
        if start == end:
            raise p.error("end_hour", "must differ from start_hour (the window would be empty;"
                                      " for the whole day write start_hour: 0, end_hour: 24)")
        return cls(start, end, p.timezone())

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        local = local_time(ctx.now, self.tz)
        if self._inside(local.hour):
            return None
        return Deny("OUTSIDE_ALLOWED_HOURS",
                    f"deployments are allowed only {self.start_hour:02d}:00-{self.end_hour:02d}:00"
                    f" {self.tz.key}; local time is {wall(local)}",
                    retry_after_s=next_allowed(ctx.now, self._allows))

    def _inside(self, h: int) -> bool:
        if self.start_hour < self.end_hour:
            return self.start_hour <= h < self.end_hour
        return h >= self.start_hour or h < self.end_hour  # the window wraps midnight

    def _allows(self, t: datetime) -> bool:
        return self._inside(t.astimezone(self.tz).hour)

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        return {**_local(ctx, self.tz),
                "allowed_hours": f"{self.start_hour:02d}:00-{self.end_hour:02d}:00"}


@dataclass(frozen=True)
class FreezeWindows(StatelessRule):
    kind: ClassVar[str] = "freeze_windows"
    reads: ClassVar[frozenset[str]] = frozenset({"now"})
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
        """Windows are absolute instants (their offsets say where they were written), so a
        DST change never moves them. Retry after the freeze lifts: the end of this window,
        or of the last window that overlaps or touches it."""
        now = ctx.now if ctx.now.tzinfo is not None else ctx.now.replace(tzinfo=UTC)
        for start, end, reason in self.windows:
            if start <= now < end:
                lifts = end
                extended = True
                while extended:
                    extended = False
                    for s2, e2, _ in self.windows:
                        if s2 <= lifts < e2:
                            lifts, extended = e2, True
                why = f" ({reason})" if reason else ""
                until = "" if lifts == end else f"; frozen until {lifts.isoformat()}"
                return Deny("CHANGE_FREEZE",
                            f"change freeze from {start.isoformat()} to {end.isoformat()}{why}"
                            f"{until}", (lifts - now).total_seconds())
        return None

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        for start, end, reason in self.windows:
            if start <= ctx.now < end:
                return {"now": ctx.now.isoformat(), "window.start": start.isoformat(),
                        "window.end": end.isoformat(), "window.reason": reason}
        return {"now": ctx.now.isoformat()}


# ---------------------------------------------------------------- request rules


@dataclass(frozen=True)
class MaxStepPercent(StatelessRule):
    """Largest *increase* of fleet coverage per step advance (default 100%).

    The increase is ``rollout.step_percent - rollout.previous_step_percent`` (previous defaults
    to 0, so a first step of 30% is an increase of 30 points).
    """

    kind: ClassVar[str] = "max_step_percent"
    reads: ClassVar[frozenset[str]] = frozenset({"rollout"})
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
        if not math.isfinite(pct):  # NaN would compare false and allow any step
            return Deny("STEP_TOO_LARGE", f"rollout step_percent {pct!r} is not a number;"
                                          f" at most {self.max_percent:g}% per step is allowed")
        if not isinstance(prev, int | float) or isinstance(prev, bool) or not math.isfinite(
                prev):
            prev = 0.0  # unknown: the step counts from nothing (the larger increase)
        increase = pct - prev
        if increase > self.max_percent + 1e-9:
            return Deny("STEP_TOO_LARGE",
                        f"rollout step goes from {prev:g}% to {pct:g}% of the fleet, an increase"
                        f" of {increase:g} points; at most {self.max_percent:g}% per step is"
                        " allowed")
        return None

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        rollout = ctx.section("rollout")
        pct = rollout.get("step_percent", 0.0)
        prev = rollout.get("previous_step_percent", 0.0)
        out = {"rollout.step_percent": render(pct), "rollout.previous_step_percent": render(prev),
               "max_percent": f"{self.max_percent:g}"}
        if isinstance(pct, int | float) and isinstance(prev, int | float):
            out["increase"] = f"{pct - prev:g}"
        return out


@dataclass(frozen=True)
class RequireApproval(StatelessRule):
    kind: ClassVar[str] = "require_approval"
    reads: ClassVar[frozenset[str]] = frozenset({"rollout"})
    per_step: bool
    min_approvals: int

    @classmethod
    def parse(cls, p: Params) -> RequireApproval:
        return cls(p.boolean("per_step"), p.integer("min_approvals", 1, minimum=1))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        rollout = ctx.section("rollout")
        step = rollout.get("step", 0)
        author = rollout.get("created_by", "")
        approvals = rollout.get("approvals") or []
        approvers = {
            a["actor"] for a in (approvals if isinstance(approvals, list) else [])
            if isinstance(a, dict) and isinstance(a.get("actor"), str) and a["actor"]
            and a["actor"] != author and (not self.per_step or a.get("step", 0) == step)
        }
        if len(approvers) >= self.min_approvals:
            return None
        what = f"step {step}" if self.per_step else "this rollout"
        return Deny("APPROVAL_REQUIRED",
                    f"{what} needs {self.min_approvals} approval(s) from someone other than its"
                    f" author; has {len(approvers)}")

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        rollout = ctx.section("rollout")
        return {"rollout.step": render(rollout.get("step", 0)),
                "rollout.created_by": render(rollout.get("created_by", "")),
                "rollout.approvals": render(rollout.get("approvals") or []),
                "min_approvals": str(self.min_approvals), "per_step": render(self.per_step)}


@dataclass(frozen=True)
class DeviceConstraints(StatelessRule):
    """Constraints on the device a config goes to: OS version per platform, memory, groups.

    The rule needs device facts: it applies where a request carries a device (every
    ``device`` checkpoint request; a push or auto-apply only when it carries one, which the
    gRPC API does not) and does not apply elsewhere. Where it applies, a fact the device does
    not report, or reports as junk, denies and names the value: never "allowed because
    unreadable". A platform the rule names no minimum for has no OS constraint.
    """

    kind: ClassVar[str] = "device_constraints"
    reads: ClassVar[frozenset[str]] = frozenset({"device"})
    needs_facts: ClassVar[str | None] = "device"
    min_os_version: tuple[tuple[str, str], ...]  # (platform, lower case; minimum version)
    min_memory_bytes: int
    allowed_groups: frozenset[str]

    @classmethod
    def parse(cls, p: Params) -> DeviceConstraints:
        versions = p.mapping("min_os_version")
        pairs: dict[str, str] = {}
        for k in list(versions.data):
            key = str(k)
            platform = key.strip().lower()
            if not platform:
                raise versions.error(key, "expected a platform name")
            if platform in pairs:
                raise versions.error(key, f"platform {platform!r} is given twice (platforms"
                                          " are compared ignoring case)")
            if not isinstance(k, str):
                raise versions.error(key, f"expected a platform name, got {k!r}")
            pairs[platform] = versions.version(key)
        groups = p.strings("allowed_groups")
        for i, g in enumerate(groups):
            if not g.strip():
                raise p.fail((*p.path, "allowed_groups", i), "expected a group name, got ''")
        rule = cls(tuple(pairs.items()), p.quantity("min_memory", 0), frozenset(groups))
        if not rule.min_os_version and not rule.min_memory_bytes and not rule.allowed_groups:
            raise p.fail(p.path, "required: at least one of min_os_version, min_memory,"
                                 " allowed_groups")
        return rule

    def applies(self, ctx: EvalContext) -> bool:
        """Whether this request has device facts to judge (see the class docstring)."""
        return ctx.checkpoint is Checkpoint.DEVICE or bool(ctx.section("device"))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        if not self.applies(ctx):
            return None
        device = ctx.section("device")
        if self.min_os_version:
            deny = self._os_version(device)
            if deny is not None:
                return deny
        if self.min_memory_bytes:
            mem = device.get("memory_bytes")
            if not isinstance(mem, int) or isinstance(mem, bool) or mem <= 0:
                return Deny("DEVICE_CONSTRAINT",
                            f"device reports no usable memory size ({_shown(mem)}); the"
                            f" minimum is {self.min_memory_bytes} bytes")
            if mem < self.min_memory_bytes:
                return Deny("DEVICE_CONSTRAINT",
                            f"device memory {mem} bytes is below the minimum"
                            f" {self.min_memory_bytes} bytes")
        if self.allowed_groups:
            raw = device.get("groups")
            groups = {g for g in raw if isinstance(g, str)} if isinstance(raw, list) else set()
            if not groups & self.allowed_groups:
                return Deny("DEVICE_CONSTRAINT",
                            f"device is in none of the allowed groups"
                            f" {sorted(self.allowed_groups)} (its groups:"
                            f" {sorted(groups) if groups else _shown(raw)})")
        return None

    def _os_version(self, device: Mapping[str, Any]) -> Deny | None:
        raw = device.get("platform")
        platform = raw.strip().lower() if isinstance(raw, str) else ""
        if not platform:
            return Deny("DEVICE_CONSTRAINT",
                        f"device reports no platform ({_shown(raw)}); minimum OS versions are"
                        f" set for {', '.join(p for p, _ in self.min_os_version)}")
        minimum = dict(self.min_os_version).get(platform)
        if minimum is None:
            return None
        have = device.get("os_version")
        if not isinstance(have, str) or not have.strip():
            return Deny("DEVICE_CONSTRAINT",
                        f"{platform} device reports no OS version ({_shown(have)}); the"
                        f" minimum is {minimum}")
        try:
            older = compare_versions(have.strip(), minimum) < 0
        except CelError:
            return Deny("DEVICE_CONSTRAINT",
                        f"{platform} OS version {_shown(have)} is not a version (expected"
                        f" e.g. 16.4.1); the minimum is {minimum}")
        if older:
            return Deny("DEVICE_CONSTRAINT",
                        f"{platform} {have.strip()} is older than the minimum {minimum}")
        return None

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        device = ctx.section("device")
        platform = device.get("platform", "")
        out = {"device.platform": render(platform)}
        key = platform.strip().lower() if isinstance(platform, str) else ""
        for plat, minimum in self.min_os_version:
            if plat == key:
                out["device.os_version"] = render(device.get("os_version", ""))
                out["min_os_version"] = minimum
        if self.min_memory_bytes:
            out["device.memory_bytes"] = render(device.get("memory_bytes", 0))
            out["min_memory_bytes"] = str(self.min_memory_bytes)
        if self.allowed_groups:
            out["device.groups"] = render(device.get("groups") or [])
            out["allowed_groups"] = render(sorted(self.allowed_groups))
        return out


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
    * it applies at ``rollout_precondition`` (and to any request carrying metrics).
    """

    kind: ClassVar[str] = "quality_gate"
    reads: ClassVar[frozenset[str]] = frozenset({"metrics"})
    needs_facts: ClassVar[str | None] = "metrics"
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
            for i, k in enumerate(keys):
                if not k.strip("/"):
                    raise c.fail((*c.path, "keys", i), f"expected a key, got {k!r}")
            metric = c.string("metric")
            if not metric.strip() or metric.startswith("/") or metric.endswith("/"):
                raise c.error("metric", f"expected a metric name, got {metric!r}")
            conds.append(QualityCondition(
                metric, "=" if op == "==" else op,
                0.0 if op == "exists" else c.number("threshold", minimum=-1e300), keys))
            c.reject_unknown()
        acc = p.optional_number("min_accuracy")
        if acc is not None:
            conds.append(QualityCondition("accuracy", ">=", acc))
        drops: list[tuple[str, float]] = []
        raw = p._get("max_quality_drop", None)
        if isinstance(raw, Mapping):
            dp = p.mapping("max_quality_drop")
            metric = dp.string("metric", "accuracy")
            if not metric.strip():
                raise dp.error("metric", "expected a metric name, got ''")
            drops.append((metric, dp.number("max")))
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

    def applies(self, ctx: EvalContext) -> bool:
        """Where metrics can be: the rollout precondition (``CheckRollout.metrics``), or a
        request that carries some. A push never does, so a gate there would deny every push
        as "not measured": like device rules, it does not apply where its facts cannot be."""
        return ctx.checkpoint is Checkpoint.ROLLOUT_PRECONDITION or bool(ctx.section("metrics"))

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        if not self.applies(ctx):
            return None
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
            if not math.isfinite(base - cur) or base - cur > max_drop + 1e-12:
                return Deny("QUALITY_GATE_FAILED",
                            f"quality gate failed: metric {metric!r} = {cur:g} dropped"
                            f" {base - cur:g} below its baseline {base:g} (at most {max_drop:g})")
        return None

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        metrics = ctx.section("metrics")
        for c in self.conditions:
            keys = self._in_scope(metrics, c)
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
        for metric, max_drop in self.max_drop:
            base, cur = metrics.get(BASELINE_PREFIX + metric), metrics.get(metric)
            out = {"metric": metric, "value": render(cur), "baseline": render(base),
                   "max_drop": f"{max_drop:g}"}
            if isinstance(base, int | float) and isinstance(cur, int | float):
                out["drop"] = f"{base - cur:g}"
            return out
        return {}


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
    reads: ClassVar[frozenset[str]] = frozenset({"metrics"})
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
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            if math.isnan(v):  # compares false with everything: unreadable, so a breach
                out.append(Deny("HEALTH_THRESHOLD_EXCEEDED",
                                f"metric {metric!r} = {v!r} is not a number (threshold"
                                f" {limit:g})"))
            elif v > limit:
                out.append(Deny("HEALTH_THRESHOLD_EXCEEDED",
                                f"metric {metric!r} = {v:g} exceeds the threshold {limit:g}"))
        return out

    def evaluate(self, ctx: EvalContext) -> Deny | None:
        found = self.breaches(ctx)
        return found[0] if found else None

    def explain(self, ctx: EvalContext) -> dict[str, str]:
        metrics = ctx.section("metrics")
        out: dict[str, str] = {}
        for metric, limit in self.thresholds:
            v = metrics.get(metric)
            if isinstance(v, int | float) and not isinstance(v, bool) and v > limit:
                out[f"metrics.{metric}"] = f"{v:g}"
                out[f"max_{metric}"] = f"{limit:g}"
        return out


# ---------------------------------------------------------------- counter rules


@dataclass(frozen=True)
class CounterSpec:
    """A counter rule: what the engine reserves in the counter store, and in whose scope."""

    #: The counter store's kind for each counter rule (the store knows how each counts).
    KINDS: ClassVar[dict[str, CounterKind]] = {
        "daily_cap": CounterKind.DAILY_CAP, "cooldown": CounterKind.COOLDOWN,
        "velocity": CounterKind.VELOCITY, "rollback_rate": CounterKind.ROLLBACK_RATE,
        "min_step_duration": CounterKind.MIN_STEP_DURATION}

    kind: str  # daily_cap | cooldown | velocity | rollback_rate | min_step_duration
    scope: str  # one of SCOPES
    scope_expression: str | None = None
    max_count: int = 0
    window_seconds: int = 0
    min_interval_seconds: int = 0
    timezone: str = "UTC"
    threshold_percent: float = 0.0
    min_deployments: int = 0
    #: Where ``scope_expression`` is in its YAML file, by field path
    #: (``rule.daily_cap.scope.expression``), as ``CelRule.locations``: recorded by the loader
    #: so a compile error names the file line and column inside the expression.
    locations: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def explain(self, retry_after_s: float | None = None) -> dict[str, str]:
        """Counter rules deny in the store; say which counter and its parameters."""
        out = {"counter": self.kind, "scope": self.scope}
        if self.max_count:
            out["max_count"] = str(self.max_count)
        if self.window_seconds:
            out["window_seconds"] = str(self.window_seconds)
        if self.min_interval_seconds:
            out["min_interval_seconds"] = str(self.min_interval_seconds)
        if self.threshold_percent:
            out["threshold_percent"] = f"{self.threshold_percent:g}"
        if retry_after_s is not None:
            out["retry_after_s"] = f"{retry_after_s:g}"
        return out

    def rule(self, rule_id: str, scope_key: str, counter_id: str,
             history_seconds: int = 0) -> CounterRule:
        """The store's rule at ``scope_key``; ValueError when the store cannot take it.
        ``history_seconds``: see ``CompiledPolicy.counter_history_s``."""
        return CounterRule(
            rule_id=rule_id, kind=self.KINDS[self.kind], scope_key=scope_key,
            max_count=self.max_count, window_seconds=float(self.window_seconds),
            min_interval_seconds=float(self.min_interval_seconds), timezone=self.timezone,
            threshold_percent=self.threshold_percent,
            min_deployments=max(1, self.min_deployments), counter_id=counter_id,
            history_seconds=float(history_seconds))

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


#: Upper bounds on counter parameters: a year of window, a billion deploys. Larger values
#: load, then overflow the store's expiry times or its doubles and deny every request.
MAX_MINUTES = 366 * 24 * 60
MAX_COUNT = 1_000_000_000
#: Rules that read reported events (rollback_rate, min_step_duration) cannot look further
#: back than the counter store keeps events: a longer window loaded, then denied every push
#: ("longer than the event retention") or stopped counting after a week.
EVENT_RETENTION_S = DEFAULT_EVENT_RETENTION_SECONDS


def _within_retention(p: Params, key: str, unit_s: int) -> int:
    most = EVENT_RETENTION_S // unit_s
    value = p.integer(key, minimum=1, maximum=MAX_MINUTES)
    if value > most:
        raise p.error(key, f"at most {most}: the counter store keeps reported events"
                           f" {EVENT_RETENTION_S // 86400} days, got {value}")
    return value


def _parse_counter(kind: str, p: Params) -> CounterSpec:
    if kind == "daily_cap":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        return CounterSpec(kind, scope, expr,
                           max_count=p.integer("max_count", minimum=1, maximum=MAX_COUNT),
                           timezone=p.timezone().key)
    if kind == "cooldown":
        scope, expr = CounterSpec.parse_scope(p, "agent")
        return CounterSpec(kind, scope, expr, min_interval_seconds=60 * p.integer(
            "minutes", minimum=1, maximum=MAX_MINUTES))
    if kind == "velocity":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        return CounterSpec(kind, scope, expr,
                           max_count=p.integer("max_count", minimum=1, maximum=MAX_COUNT),
                           window_seconds=60 * p.integer("window_minutes", minimum=1,
                                                         maximum=MAX_MINUTES))
    if kind == "rollback_rate":
        scope, expr = CounterSpec.parse_scope(p, "tenant")
        if expr is not None:  # events are recorded per tenant, rollout, agent, device, group
            raise p.error("scope", "rollback_rate counts the deploys and rollbacks reported"
                                   " per tenant, rollout, agent, device or group: an"
                                   " expression scope would never see one")
        return CounterSpec(kind, scope, expr,
                           threshold_percent=p.number("threshold_percent", maximum=100.0),
                           window_seconds=3600 * _within_retention(p, "window_hours", 3600),
                           min_deployments=p.integer("min_deployments", 1, minimum=1,
                                                     maximum=MAX_COUNT))
    # min_step_duration: always per rollout, from the reported step advances
    return CounterSpec(kind, "rollout", None,
                       min_interval_seconds=60 * _within_retention(p, "minutes", 60))


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
