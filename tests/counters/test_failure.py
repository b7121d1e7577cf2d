"""Fail-closed under load: Redis killed, restarted, or hung while callers keep reserving.

During the outage every call must raise CounterStoreUnavailable (nothing else), and keep
returning (every caller makes call after call: none hangs on the dead connection); once Redis
is back, the same store instance allows again, with no help from the caller, and keeps
allowing. Each phase lasts until its condition holds (polled, with a generous deadline):
how fast is measured in ``bench/``, not asserted here.

The servers killed here run with an fsynced append-only file, as pdp's README asks of a
production Redis: they come back with their data, so this is about connections healing.
Coming back empty is a lost state, denied until acknowledged (``test_state_lost.py``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStore,
    CounterStoreUnavailable,
    open_counter_store,
)
from tests.support.procs import RedisCluster, RedisServer
from tests.support.wait import DEADLINE_S

TIMEOUT = 0.15
CALLERS = 24
# what survives a SIGKILL: every write fsynced before its reply
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class Load:
    """Concurrent callers reserving in a loop; every call's caller, start, end and outcome."""

    store: CounterStore
    calls: list[tuple[int, float, float, str]] = field(default_factory=list)
    stop: bool = False
    t_down: float = 0.0  # outage starts
    t_up: float = 0.0  # restart / resume requested
    t_healed: float = 0.0  # every caller was allowed again

    async def caller(self, i: int) -> None:
        rule = CounterRule("v", CounterKind.VELOCITY, f"agent:{i}", max_count=10**6,
                           window_seconds=60)
        while not self.stop:
            t0 = time.monotonic()
            try:
                r = await self.store.reserve("t", [rule], timeout=TIMEOUT)
                outcome = "allow" if r.allowed else "deny"
            except CounterStoreUnavailable:
                outcome = "unavailable"
            except Exception as e:  # anything else is a bug: record it, never hide it
                outcome = f"error:{type(e).__name__}:{e}"
            self.calls.append((i, t0, time.monotonic(), outcome))
            await asyncio.sleep(0.005)

    def between(self, a: float, b: float = float("inf")
                ) -> list[tuple[int, float, float, str]]:
        """Calls that started at or after ``a`` and ended by ``b``."""
        return [c for c in self.calls if a <= c[1] and c[2] <= b]

    def each_caller(self, calls: list[tuple[int, float, float, str]], n: int) -> bool:
        """Every caller has at least ``n`` of ``calls``."""
        per = [0] * CALLERS
        for c in calls:
            per[c[0]] += 1
        return min(per) >= n

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {DEADLINE_S:g} s;"
                                     f" outcomes: {sorted({c[3] for c in self.calls})}")
            await asyncio.sleep(0.02)


async def _run_outage(srv: RedisServer, outage: str) -> Load:
    store = open_counter_store(
        CounterSettings(url=srv.url, connect_timeout=0.1, op_timeout=0.5, pool_size=CALLERS)
    )
    load = Load(store)
    # Connect and load the scripts first: the property is about the outage, not a cold start
    # racing 24 first connections against a 150 ms budget on a loaded machine.
    assert await store.ping()
    # ... and open the pool's connections (one per caller), each under a generous timeout:
    # 24 connects racing a 150 ms budget on a loaded machine failed the "before" phase.
    warm = CounterRule("warm", CounterKind.VELOCITY, "agent:warm", max_count=10**6,
                       window_seconds=60)

    async def warmed() -> None:  # the store's 500 ms per call can pass on a loaded machine
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                await store.reserve("t", [warm], timeout=DEADLINE_S)
                return
            except CounterStoreUnavailable:
                if time.monotonic() > deadline:
                    raise

    await asyncio.gather(*(warmed() for _ in range(CALLERS)))
    tasks = [asyncio.create_task(load.caller(i)) for i in range(CALLERS)]
    try:
        await load.until(lambda: load.each_caller(load.calls, 2), "every caller was served")
        load.t_down = time.monotonic()
        if outage == "kill":
            srv.kill()
        else:
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGSTOP)
        # an outage long enough for every caller to fail twice: none hangs on it
        await load.until(lambda: load.each_caller(load.between(load.t_down + 0.01), 2),
                         "every caller kept getting answers during the outage")
        load.t_up = time.monotonic()
        if outage == "kill":
            await asyncio.to_thread(srv.start)
        else:
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGCONT)

        def healed() -> bool:
            return load.each_caller([c for c in load.between(load.t_up)
                                     if c[3] == "allow"], 1)
        await load.until(healed, "every caller allowed again once Redis was back")
        load.t_healed = time.monotonic()
        # ...and stays healed: the next calls of every caller are allowed too
        await load.until(lambda: load.each_caller(load.between(load.t_healed), 3),
                         "every caller kept calling after the recovery")
    finally:
        load.stop = True
        await asyncio.gather(*tasks)
        await store.close()
    return load


def _check(load: Load) -> None:
    errors = [c for c in load.calls if c[3].startswith("error")]
    assert not errors, errors[:5]
    before = load.between(0, load.t_down)
    assert before and all(c[3] == "allow" for c in before)
    # started after the outage began and ended before Redis was back: refused, nothing else
    during = load.between(load.t_down + 0.01, load.t_up)
    assert len(during) >= 2 * CALLERS, "the load kept calling during the outage"
    assert all(c[3] == "unavailable" for c in during), {c[3] for c in during}
    healed = load.between(load.t_healed)
    assert healed and all(c[3] == "allow" for c in healed), {c[3] for c in healed}


async def test_redis_killed_and_restarted_under_load() -> None:
    srv = RedisServer(None, *PERSISTENT).start()
    try:
        _check(await _run_outage(srv, "kill"))
    finally:
        srv.close()


async def test_redis_hung_then_resumed_under_load() -> None:
    srv = RedisServer().start()
    try:
        _check(await _run_outage(srv, "hang"))
    finally:
        if srv.proc is not None:
            srv.proc.send_signal(signal.SIGCONT)
        srv.close()


async def test_cluster_node_killed_and_restarted() -> None:
    """The master that owns the tenant's slot dies and comes back (same port, same config)."""
    cluster = RedisCluster()
    for node in cluster.nodes:
        node.extra_args.extend(PERSISTENT)
    cluster.start()
    store = open_counter_store(
        CounterSettings(url=cluster.url, cluster=True, connect_timeout=0.1, op_timeout=0.5)
    )
    rule = CounterRule("v", CounterKind.VELOCITY, "tenant:t", max_count=10**6, window_seconds=60)
    tenant = "t-cluster-outage"
    try:
        assert (await store.reserve(tenant, [rule], timeout=1)).allowed
        owner = _owner(cluster, tenant)
        owner.kill()
        for _ in range(10):  # refused, every time, and each call returns
            try:
                await store.reserve(tenant, [rule], timeout=TIMEOUT)
                raise AssertionError("allowed while the owning master was down")
            except CounterStoreUnavailable:
                pass
            await asyncio.sleep(0.02)
        await asyncio.to_thread(owner.start)
        # A rebooted cluster master refuses writes for ~2 s by design (Redis's
        # CLUSTER_WRITABLE_DELAY); the store itself retries nothing and needs no restart.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if (await store.reserve(tenant, [rule], timeout=TIMEOUT)).allowed:
                    break
            except CounterStoreUnavailable:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no allow within {DEADLINE_S:g} s of the node's return")
            await asyncio.sleep(0.02)
    finally:
        await store.close()
        cluster.close()


def _owner(cluster: RedisCluster, tenant: str) -> RedisServer:
    """The node serving the slot of ``pdp:{tenant}``."""
    import redis

    from pdp.counters.keys import tenant_prefix

    for node in cluster.nodes:
        with redis.Redis(port=node.port) as r:
            slot = int(r.execute_command("CLUSTER KEYSLOT", tenant_prefix(tenant)))
            for start, end, master, *_ in r.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end and int(master[1]) == node.port:
                    return node
    raise AssertionError("no owner found")
