"""Racing for the last slots: exactly N allowed, never more, across stores and processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

import pytest

from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStore,
    MemoryCounterStore,
    open_counter_store,
)
from tests.counters.conftest import new_tenant
from tests.support.procs import RedisCluster, RedisServer

CAP = 10


def _rules(round_no: int, caller: int) -> list[CounterRule]:
    return [
        CounterRule(f"cap-{round_no}", CounterKind.DAILY_CAP, "tenant:t", max_count=CAP),
        CounterRule(f"vel-{round_no}", CounterKind.VELOCITY, "tenant:t", max_count=CAP + 5,
                    window_seconds=3600),
        CounterRule(f"cool-{round_no}", CounterKind.COOLDOWN, f"agent:{caller}",
                    min_interval_seconds=3600),
    ]


async def _race(stores: Sequence[CounterStore], tenant: str, round_no: int, callers: int) -> int:
    async def one(i: int) -> bool:
        store = stores[i % len(stores)]
        r = await store.reserve(tenant, _rules(round_no, i), timeout=5)
        return bool(r.allowed)

    return sum(await asyncio.gather(*(one(i) for i in range(callers))))


@pytest.mark.parametrize("where", ["redis", "cluster"])
async def test_many_store_instances_race_for_a_cap(
    where: str, request: pytest.FixtureRequest
) -> None:
    if where == "redis":
        srv: RedisServer = request.getfixturevalue("redis_srv")
        settings = CounterSettings(url=srv.url, pool_size=16)
    else:
        c: RedisCluster = request.getfixturevalue("redis_cluster")
        settings = CounterSettings(url=c.url, cluster=True, pool_size=16)
    stores = [open_counter_store(settings) for _ in range(4)]
    tenant = new_tenant()
    try:
        for round_no in range(5):
            assert await _race(stores, tenant, round_no, 64) == CAP
    finally:
        for s in stores:
            await s.close()


async def test_memory_store_race() -> None:
    store = MemoryCounterStore()
    assert await _race([store], new_tenant(), 0, 64) == CAP


async def test_batches_racing_from_several_stores(redis_srv: RedisServer) -> None:
    settings = CounterSettings(url=redis_srv.url)
    stores = [open_counter_store(settings) for _ in range(4)]
    tenant = new_tenant()
    try:
        items = [[CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=100)]] * 40
        results = await asyncio.gather(
            *(s.reserve_batch(tenant, items, timeout=5) for s in stores)
        )
        allowed = [sum(r.allowed for r in res) for res in results]
        assert sum(allowed) == 100
        for res in results:  # each batch consumed in order: allows form a prefix
            flags = [r.allowed for r in res]
            assert flags == sorted(flags, reverse=True)
    finally:
        for s in stores:
            await s.close()


# -- several OS processes -------------------------------------------------------------------


def _worker(url: str, tenant: str, callers: int, barrier: Barrier, conn: Connection) -> None:
    """A sidecar process: for each round it is told, race ``callers`` reserves at once."""

    async def main() -> None:
        store = open_counter_store(CounterSettings(url=url, pool_size=callers))
        try:
            await store.ping()  # connect and load scripts before the races
            while True:
                round_no = conn.recv()
                if round_no is None:
                    return
                await asyncio.to_thread(barrier.wait, 30)
                conn.send(await _race([store], tenant, round_no, callers))
        finally:
            await store.close()

    asyncio.run(main())


def test_four_processes_race_for_a_cap_of_ten_twenty_times(redis_srv: RedisServer) -> None:
    procs_n, callers, rounds = 4, 16, 20
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs_n)
    tenant = new_tenant()
    pipes = [ctx.Pipe() for _ in range(procs_n)]
    procs = [
        ctx.Process(target=_worker, args=(redis_srv.url, tenant, callers, barrier, child),
                    daemon=True)
        for _, child in pipes
    ]
    for p in procs:
        p.start()
    try:
        totals = []
        for round_no in range(rounds):
            for parent, _ in pipes:
                parent.send(round_no)
            per_proc = []
            for parent, _ in pipes:
                assert parent.poll(30), "worker did not answer"
                per_proc.append(parent.recv())
            totals.append(sum(per_proc))
        assert totals == [CAP] * rounds
    finally:
        for parent, _ in pipes:
            parent.send(None)
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
