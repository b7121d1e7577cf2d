"""Pick the counter backend from settings: no URL means the in-process store."""

from __future__ import annotations

from pdp.counters.base import CounterStore
from pdp.counters.clock import Clock
from pdp.counters.memory import MemoryCounterStore
from pdp.counters.redis_store import RedisCounterStore
from pdp.counters.settings import CounterSettings


def open_counter_store(settings: CounterSettings, *, clock: Clock | None = None) -> CounterStore:
    """Build the store; never connects here (Redis is reached lazily, within deadlines).

    ``url`` None -> :class:`MemoryCounterStore` (the embedded default); ``redis://``,
    ``rediss://`` or ``unix://`` -> :class:`RedisCounterStore`, standalone or, with
    ``cluster=True``, Redis Cluster.
    """
    if not settings.url:
        return MemoryCounterStore(
            clock,
            event_bucket_seconds=settings.event_bucket_seconds,
            event_retention_seconds=settings.event_retention_seconds,
        )
    if not settings.url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"counter store URL must start with redis://, rediss:// or unix://: {settings.url!r}"
        )
    return RedisCounterStore.from_settings(settings, clock=clock)
