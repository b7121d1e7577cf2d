"""The store's FastRedis path: pool limits, auth/db, stale and poisoned connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStoreUnavailable,
    RedisCounterStore,
    open_counter_store,
)
from pdp.counters.fastredis import FastRedis, ReplyError, pack
from pdp.counters.redis_store import make_client
from tests.counters.conftest import new_tenant
from tests.support.procs import RedisServer, redis_server

CAP = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=10)

# a script that keeps the server busy for ~``ARGV[1]`` ms (no DEBUG SLEEP in stock configs)
BUSY = """
local t0 = redis.call('TIME')
local start = t0[1] * 1e6 + t0[2]
repeat
  local t = redis.call('TIME')
until t[1] * 1e6 + t[2] - start >= tonumber(ARGV[1]) * 1000
return 'done'
"""


@pytest.fixture
async def fast(redis_srv: RedisServer) -> AsyncIterator[FastRedis]:
    f = FastRedis.from_client(make_client(CounterSettings(url=redis_srv.url)), 2)
    assert f is not None
    try:
        yield f
    finally:
        await f.close()


def test_only_standalone_clients_take_the_fast_path() -> None:
    assert FastRedis.from_client(make_client(CounterSettings(url="redis://127.0.0.1:1/0")), 5)
    assert FastRedis.from_client(make_client(CounterSettings(url="unix:///tmp/x.sock")), 5)
    cluster = make_client(CounterSettings(url="redis://127.0.0.1:1/0", cluster=True))
    assert FastRedis.from_client(cluster, 5) is None
    named = aioredis.Redis.from_url("redis://127.0.0.1:1/0", client_name="x")
    assert FastRedis.from_client(named, 5) is None
    store = RedisCounterStore(make_client(CounterSettings(url="redis://127.0.0.1:1/0")),
                              fast_path=False)
    assert store._fast is None


async def test_pool_never_exceeds_its_size_and_queues_callers(
    redis_srv: RedisServer,
) -> None:
    store = open_counter_store(CounterSettings(url=redis_srv.url, pool_size=2))
    assert isinstance(store, RedisCounterStore) and store._fast is not None
    tenant = new_tenant()
    try:
        results = await asyncio.gather(
            *(store.reserve(tenant, [CAP], timeout=5) for _ in range(40))
        )
        assert sum(r.allowed for r in results) == 10
        assert store._fast._size <= 2 and len(store._fast._idle) <= 2
        assert not store._fast._waiters
    finally:
        await store.close()


async def test_timed_out_call_never_leaks_its_late_reply(fast: FastRedis) -> None:
    """A call cancelled mid-flight closes its connection; the next call gets its own reply."""
    slow = pack(b"EVAL", BUSY.encode(), b"0", b"150")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.03):
            await fast.call(slow)
    assert fast._size == 0
    # Redis runs one script at a time: the PING below is answered after the late 'done' went
    # out, on the closed connection; were it still pooled, the PING would read 'done'.
    assert await fast.call(pack(b"PING")) == b"PONG"
    assert await fast.call(pack(b"ECHO", b"x")) == b"x"


async def test_cancelled_waiters_do_not_lose_connections(fast: FastRedis) -> None:
    slow = pack(b"EVAL", BUSY.encode(), b"0", b"60")

    async def call(limit: float) -> object:
        async with asyncio.timeout(limit):
            return await fast.call(slow)

    outcomes = await asyncio.gather(*(call(0.5 if i < 2 else 0.01) for i in range(8)),
                                    return_exceptions=True)
    assert outcomes[:2] == [b"done", b"done"]
    assert all(isinstance(o, TimeoutError) for o in outcomes[2:])
    assert fast._size == 2 and len(fast._idle) == 2 and not fast._waiters
    assert await asyncio.gather(*(fast.call(pack(b"PING")) for _ in range(6))) == [b"PONG"] * 6


async def test_connection_killed_while_idle_is_replaced(
    fast: FastRedis, redis_srv: RedisServer
) -> None:
    assert await fast.call(pack(b"CLIENT", b"SETNAME", b"victim")) == b"OK"
    async with aioredis.Redis.from_url(redis_srv.url) as admin:
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
    assert await fast.call(pack(b"PING")) == b"PONG"  # stale socket: one retry, fresh one
    assert await fast.call(pack(b"CLIENT", b"GETNAME")) is None


async def test_error_replies_are_values_and_keep_the_connection(fast: FastRedis) -> None:
    reply = await fast.call(pack(b"NOSUCHCOMMAND"))
    assert isinstance(reply, ReplyError) and "unknown command" in str(reply)
    assert await fast.call(pack(b"PING")) == b"PONG"
    assert fast._size == 1


async def test_password_and_database_from_the_url() -> None:
    with redis_server("--requirepass", "s3cret") as srv:
        good = open_counter_store(CounterSettings(url=f"redis://:s3cret@127.0.0.1:{srv.port}/3"))
        bad = open_counter_store(CounterSettings(url=f"redis://:wrong@127.0.0.1:{srv.port}/3"))
        assert isinstance(good, RedisCounterStore) and good._fast is not None
        try:
            assert await good.ping()
            assert (await good.reserve("t", [CAP], timeout=1)).allowed
            async with aioredis.Redis.from_url(
                f"redis://:s3cret@127.0.0.1:{srv.port}/3"
            ) as db3:
                assert await db3.keys("pdp:{t}:cap:*")
            assert not await bad.ping()
            with pytest.raises(CounterStoreUnavailable, match="connection setup"):
                await bad.reserve("t", [CAP], timeout=1)
        finally:
            await good.close()
            await bad.close()


async def test_fast_and_redis_py_stores_share_one_cap(redis_srv: RedisServer) -> None:
    tenant = new_tenant()
    settings = CounterSettings(url=redis_srv.url)
    stores = [
        RedisCounterStore(make_client(settings), fast_path=bool(i % 2)) for i in range(4)
    ]
    try:
        results = await asyncio.gather(
            *(stores[i % 4].reserve(tenant, [CAP], timeout=5) for i in range(64))
        )
        assert sum(r.allowed for r in results) == 10
    finally:
        for s in stores:
            await s.close()


async def test_closed_store_fails_closed(redis_srv: RedisServer) -> None:
    store = open_counter_store(CounterSettings(url=redis_srv.url))
    assert (await store.reserve(new_tenant(), [CAP], timeout=1)).allowed
    await store.close()
    with pytest.raises(CounterStoreUnavailable):
        await store.reserve(new_tenant(), [CAP], timeout=1)


async def test_single_decision_template_matches_the_general_encoding() -> None:
    """The cached per-shape request equals the general encoding, across a day change."""
    from pdp.counters import ManualClock

    clock = ManualClock(20_781 * 86_400 - 5)  # 5 s before a UTC midnight
    store = RedisCounterStore(make_client(CounterSettings(url="redis://127.0.0.1:1/0")),
                              clock=clock, event_retention_seconds=3600)
    shapes = [
        [CAP],
        [CounterRule("c", CounterKind.DAILY_CAP, "a:{x}", max_count=3, timezone="Asia/Tokyo"),
         CounterRule("c", CounterKind.DAILY_CAP, "b\"q\\", max_count=3, timezone="UTC"),
         CounterRule("v", CounterKind.VELOCITY, "a:{x}", max_count=2, window_seconds=9)],
        [CounterRule("r", CounterKind.ROLLBACK_RATE, "tenant:t", window_seconds=60,
                     threshold_percent=12.5, min_deployments=4),
         CounterRule("s", CounterKind.MIN_STEP_DURATION, "rollout:ü", min_interval_seconds=2)],
    ]
    try:
        for _ in range(3):
            for rules in shapes:
                assert store._encode_one(rules) == store._encode([rules])
            clock.advance(4)  # the second round crosses midnight: day tables change
        too_long = CounterRule("r", CounterKind.ROLLBACK_RATE, "t", window_seconds=7200)
        for _ in range(2):  # validation is not skipped by the template cache
            with pytest.raises(ValueError, match="retention"):
                await store.reserve("t", [too_long], timeout=1)
    finally:
        await store.close()
