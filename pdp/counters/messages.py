"""Deny results with operator-actionable messages, identical for every backend.

Stores report the raw facts of a deny (rule, now, retry instant, a couple of numbers);
this module turns them into the text an operator reads, so both backends say the same.
"""

from __future__ import annotations

import datetime as dt

from pdp.counters.days import format_instant
from pdp.counters.model import CODE_BY_KIND, CounterKind, CounterRule, ReserveResult


def human_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``; sub-minute values keep their seconds."""
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    s = round(seconds)
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (sec, "s")) if v]
    return "".join(parts)


def utc(t_ms: int) -> str:
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).isoformat(timespec="seconds")


def local(t_ms: int, tz: str) -> str:
    return format_instant(t_ms, tz)


def deny(
    rule: CounterRule,
    now_ms: int,
    retry_ms: int | None,
    a: int = 0,
    b: int = 0,
    label: str = "",
) -> ReserveResult:
    """Build the deny for ``rule``. ``a``/``b``/``label`` carry the per-kind facts:

    DAILY_CAP: a=count, label=local date; COOLDOWN and MIN_STEP_DURATION: a=time (ms) of
    the previous deployment / advance; VELOCITY: a=count in window; ROLLBACK_RATE:
    a=rollbacks, b=deployments. ``retry_ms`` is the delay until the rule frees up, or None
    when waiting alone will never free it (a cap of 0).
    """
    scope = rule.scope_key
    free_at = None if retry_ms is None else now_ms + retry_ms
    k = rule.kind
    if k is CounterKind.DAILY_CAP:
        if rule.max_count == 0:
            msg = f"daily cap is 0 for {scope}: no deployment is allowed"
        else:
            msg = (
                f"daily cap {rule.max_count} reached for {scope} on {label} ({rule.timezone})"
            )
            if free_at is not None:
                msg += f"; frees at {local(free_at, rule.timezone)}"
    elif k is CounterKind.COOLDOWN:
        msg = (
            f"cooldown of {human_duration(rule.min_interval_seconds)} active for {scope}: "
            f"previous deployment at {utc(a)}"
        )
        if free_at is not None:
            msg += f"; next allowed at {utc(free_at)}"
    elif k is CounterKind.VELOCITY:
        if rule.max_count == 0:
            msg = f"velocity limit is 0 for {scope}: no deployment is allowed"
        else:
            msg = (
                f"velocity limit {rule.max_count} per {human_duration(rule.window_seconds)} "
                f"reached for {scope} ({a} in the window)"
            )
            if free_at is not None:
                msg += f"; next slot frees at {utc(free_at)}"
    elif k is CounterKind.ROLLBACK_RATE:
        rate = 100.0 * a / b if b else 0.0
        msg = (
            f"rollback rate {rate:.1f}% ({a} rollbacks / {b} deployments in the last "
            f"{human_duration(rule.window_seconds)}) is above {rule.threshold_percent:g}% "
            f"for {scope}"
        )
        if free_at is not None:
            msg += f"; drops to the threshold by {utc(free_at)} if nothing else happens"
    else:
        msg = (
            f"minimum step duration {human_duration(rule.min_interval_seconds)} not reached "
            f"for {scope}: last step advance at {utc(a)}"
        )
        if free_at is not None:
            msg += f"; next advance allowed at {utc(free_at)}"
    return ReserveResult(
        allowed=False,
        denied_rule_id=rule.rule_id,
        code=CODE_BY_KIND[k],
        message=msg,
        retry_after_seconds=None if retry_ms is None else max(0, retry_ms) / 1000.0,
    )
