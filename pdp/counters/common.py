"""Small helpers both stores share, so their arithmetic cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pdp.counters.model import CounterEventKind, CounterKind, CounterRule

# One letter per event kind, in key names and in the record script.
EVENT_CODE = {
    CounterEventKind.DEPLOY: "d",
    CounterEventKind.ROLLBACK: "r",
    CounterEventKind.STEP_ADVANCE: "s",
}


def to_ms(seconds: float) -> int:
    """Durations travel as whole milliseconds (Lua numbers are doubles; ms stay exact)."""
    return max(1, round(seconds * 1000))


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
