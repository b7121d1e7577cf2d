"""Fixtures: one contract suite, run against every counter-store backend.

``backend`` yields a store plus a :class:`ManualClock` that the store's time follows, and
helpers that list the tenant's live keys, so the same test body runs everywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from pdp.counters import CounterStore, ManualClock, MemoryCounterStore

# 2026-11-23 10:00:00 UTC, a Monday; far from DST changes in Europe and the US.
T0 = 1_795_428_000.0


@dataclass
class Backend:
    name: str
    store: CounterStore
    clock: ManualClock
    tenant: str
    # live keys of ``tenant`` -> remaining TTL in seconds (None: no TTL set)
    key_ttls: Callable[[], Awaitable[dict[str, float | None]]]
    # make the backend drop whatever has expired (memory: sweep; Redis expires by itself)
    expire: Callable[[], Awaitable[None]]


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def _memory(clock: ManualClock, **kw: int) -> Backend:
    store = MemoryCounterStore(clock, **kw)
    tenant = new_tenant()

    async def key_ttls() -> dict[str, float | None]:
        now = clock.now()
        return {
            k: (e.expires_ms / 1000 - now)
            for k, e in store._data.items()
            if k.startswith(f"pdp:{{{tenant}}}") and e.expires_ms / 1000 > now
        }

    async def expire() -> None:
        store.sweep()

    return Backend("memory", store, clock, tenant, key_ttls, expire)


BACKENDS = ["memory"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = ManualClock(T0)
    factory = _FACTORIES[request.param]
    b = await factory(request, clock)
    try:
        yield b
    finally:
        await b.store.close()


async def _memory_factory(request: pytest.FixtureRequest, clock: ManualClock) -> Backend:
    return await _memory(clock, event_bucket_seconds=300, event_retention_seconds=2 * 86400)


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, ManualClock], Awaitable[Backend]]] = {
    "memory": _memory_factory,
}
