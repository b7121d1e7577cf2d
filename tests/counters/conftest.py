"""Fixtures: one contract suite, run against every counter-store backend.

``backend`` yields a store plus a :class:`ManualClock` that the store's time follows, and
helpers that list the tenant's live keys, so the same test body runs everywhere.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from pdp.counters import (
    CounterSettings,
    CounterStore,
    ManualClock,
    MemoryCounterStore,
    RedisCounterStore,
)
from pdp.counters.redis_store import make_client
from tests.support.procs import RedisCluster, RedisServer

# 2026-11-23 10:00:17.25 UTC, a Monday, far from DST changes in Europe and the US, and off
# every bucket / minute edge (Redis-backed time follows it only to within a millisecond).
T0 = 1_795_428_017.25


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


# "redis" runs on the store's FastRedis path; "redis-py" is the same standalone server through
# redis-py (the path Redis Cluster and unsupported settings use), so both stay covered.
BACKENDS = ["memory", "redis", "redis-py", "cluster"]
BUCKET = 300
RETENTION = 2 * 86400


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


def shifted(clock: ManualClock) -> Callable[[], float]:
    """Make the Redis server's clock, as the scripts see it, follow ``clock``."""
    return lambda: clock.now() - time.time()


async def _redis_backend(
    name: str,
    settings: CounterSettings,
    node_urls: list[str],
    clock: ManualClock,
    *,
    fast_path: bool = True,
) -> Backend:
    store = RedisCounterStore(
        make_client(settings),
        clock=clock,
        event_bucket_seconds=BUCKET,
        event_retention_seconds=RETENTION,
        server_time_offset=shifted(clock),
        fast_path=fast_path,
    )
    assert (store._fast is not None) == (fast_path and not settings.cluster)
    tenant = new_tenant()

    async def key_ttls() -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for url in node_urls:
            async with aioredis.Redis.from_url(url, decode_responses=True) as r:
                for k in await r.keys(f"pdp:{{{tenant}}}*"):
                    ms = await r.pttl(k)
                    out[k] = None if ms < 0 else ms / 1000
        return out

    async def expire() -> None:
        return None

    return Backend(name, store, clock, tenant, key_ttls, expire)


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
    return await _memory(clock, event_bucket_seconds=BUCKET, event_retention_seconds=RETENTION)


async def _redis_factory(request: pytest.FixtureRequest, clock: ManualClock) -> Backend:
    srv: RedisServer = request.getfixturevalue("redis_srv")
    return await _redis_backend("redis", CounterSettings(url=srv.url), [srv.url], clock)


async def _redis_py_factory(request: pytest.FixtureRequest, clock: ManualClock) -> Backend:
    srv: RedisServer = request.getfixturevalue("redis_srv")
    return await _redis_backend(
        "redis-py", CounterSettings(url=srv.url), [srv.url], clock, fast_path=False
    )


async def _cluster_factory(request: pytest.FixtureRequest, clock: ManualClock) -> Backend:
    c: RedisCluster = request.getfixturevalue("redis_cluster")
    settings = CounterSettings(url=c.url, cluster=True)
    return await _redis_backend("cluster", settings, [n.url for n in c.nodes], clock)


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, ManualClock], Awaitable[Backend]]] = {
    "memory": _memory_factory,
    "redis": _redis_factory,
    "redis-py": _redis_py_factory,
    "cluster": _cluster_factory,
}
