"""Pick the counter backend from settings: no URL means the in-process store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pdp.counters.base import CounterStore
from pdp.counters.clock import Clock
from pdp.counters.memory import MemoryCounterStore
from pdp.counters.model import CounterStateChange
from pdp.counters.redis_store import RedisCounterStore
from pdp.counters.settings import CounterSettings


def open_counter_store(
    settings: CounterSettings,
    *,
    clock: Clock | None = None,
    on_state_lost: Callable[[CounterStateChange], None] | None = None,
    on_audit_event: Callable[[dict[str, Any]], None] | None = None,
) -> CounterStore:
    """Build the store; never connects here (Redis is reached lazily, within deadlines).

    ``url`` None -> :class:`MemoryCounterStore` (the embedded default); ``redis://``,
    ``rediss://`` or ``unix://`` -> :class:`RedisCounterStore`, standalone or, with
    ``cluster=True``, Redis Cluster.

    ``on_state_lost`` (a metric) and ``on_audit_event`` (an audit event dict) hear of a
    lost counter state and its end; only Redis can lose state behind pdp's back, so the
    in-process store never calls them.
    """
    if not settings.url:
        return MemoryCounterStore(
            clock,
            event_bucket_seconds=settings.event_bucket_seconds,
            event_retention_seconds=settings.event_retention_seconds,
            history_seconds=settings.history_seconds,
        )
    if not settings.url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"counter store URL must start with redis://, rediss:// or unix://: {settings.url!r}"
        )
    return RedisCounterStore.from_settings(
        settings, clock=clock, on_state_lost=on_state_lost, on_audit_event=on_audit_event
    )
