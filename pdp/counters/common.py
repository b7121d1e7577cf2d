"""Small helpers both stores share, so their arithmetic cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pdp.counters.model import CounterEventKind, CounterKind, CounterRule
from pdp.counters.settings import HISTORY_MAX_ENTRIES

# One letter per event kind, in key names and in the record script.
EVENT_CODE = {
    CounterEventKind.DEPLOY: "d",
    CounterEventKind.ROLLBACK: "r",
    CounterEventKind.STEP_ADVANCE: "s",
}


def to_ms(seconds: float) -> int:
    """Durations travel as whole milliseconds (Lua numbers are doubles; ms stay exact)."""
    return max(1, round(seconds * 1000))


def keep_ms(rule: CounterRule, history_ms: int) -> int:
    """How long a COOLDOWN stamp or a VELOCITY push is kept (ms): the rule's own window, or
    longer when the store's history setting or the rule's ``history_seconds`` (another
    version of its policy asks for more) says so. A counter once kept only its own
    window, so a new version that lengthened it forgot the pushes between the two."""
    window = to_ms(rule.window_seconds if rule.kind is CounterKind.VELOCITY
                   else rule.min_interval_seconds)
    extra = to_ms(rule.history_seconds) if rule.history_seconds > 0 else 0
    return max(window, extra, history_ms)


def keep_count(rule: CounterRule) -> int:
    """How many of its newest pushes a VELOCITY set keeps at most: a verdict reads only the
    newest ``max_count`` of them, so this bounds the set without changing any verdict of a
    rule whose ``max_count`` is at most ``HISTORY_MAX_ENTRIES``."""
    return max(rule.max_count, HISTORY_MAX_ENTRIES)


def validate_items(items: Iterable[Sequence[CounterRule]], retention_seconds: int) -> None:
    """Reject rules the store cannot answer correctly, before touching any state."""
    for rules in items:
        for r in rules:
            if r.kind is CounterKind.ROLLBACK_RATE and r.window_seconds > retention_seconds:
                raise ValueError(
                    f"{r.rule_id}: rollback window {r.window_seconds:g}s is longer than the "
                    f"event retention {retention_seconds}s of this counter store"
                )


def distinct(values: Iterable[str]) -> list[str]:
    """Order-preserving de-duplication (an event happened once per scope)."""
    return list(dict.fromkeys(values))


def rollback_verdict(
    buckets: dict[int, tuple[int, int]],
    now_ms: int,
    window_ms: int,
    bucket_ms: int,
    threshold: float,
    min_deployments: int,
) -> tuple[bool, int, int, int]:
    """Decide ROLLBACK_RATE from ``{bucket index: (deploys, rollbacks)}``.

    A bucket counts while its end is after ``now - window``, so an event counts for
    between ``window`` and ``window + bucket`` after it happened. Returns
    ``(deny, rollbacks, deploys, retry_ms)``; ``retry_ms`` is when, if no new event
    arrives, old buckets will have fallen out far enough for the rule to pass.
    The Lua script implements the same steps.
    """
    first = (now_ms - window_ms) // bucket_ms
    last = now_ms // bucket_ms
    live = sorted(b for b in buckets if first <= b <= last)
    dep = sum(buckets[b][0] for b in live)
    rb = sum(buckets[b][1] for b in live)

    def denies(d: int, r: int) -> bool:
        return d >= min_deployments and r * 100 > threshold * d

    if not denies(dep, rb):
        return False, rb, dep, 0
    d, r = dep, rb
    retry = 0
    for b in live:
        d -= buckets[b][0]
        r -= buckets[b][1]
        retry = (b + 1) * bucket_ms + window_ms - now_ms
        if not denies(d, r):
            break
    return True, rb, dep, retry
