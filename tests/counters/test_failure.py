"""Fail-closed under load: Redis killed, restarted, or hung while callers keep reserving.

During the outage every call must raise CounterStoreUnavailable (nothing else) within its
timeout plus a small margin; once Redis is back, the same store instance allows again
within 2 seconds, with no help from the caller.

The servers killed here run with an fsynced append-only file, as pdp's README asks of a
production Redis: they come back with their data, so this is about connections healing.
Coming back empty is a lost state, denied until acknowledged (``test_state_lost.py``).
"""

from __future__ import annotations

import asyncio
import signal
import time
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

TIMEOUT = 0.15
MARGIN = 0.3  # event-loop scheduling on a busy 2-core CI box (several test processes)
CALLERS = 24
# what survives a SIGKILL: every write fsynced before its reply
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class Load:
    """Concurrent callers reserving in a loop; every call's start, duration and outcome."""

    store: CounterStore
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    stop: bool = False
    t_down: float = 0.0  # outage starts
    t_up: float = 0.0  # restart / resume requested
    t_ready: float = 0.0  # Redis accepts connections again

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
            t1 = time.monotonic()
            self.calls.append((t0, t1 - t0, outcome))
            await asyncio.sleep(0.005)

    def between(self, a: float, b: float) -> list[tuple[float, float, str]]:
        return [c for c in self.calls if a <= c[0] and c[0] + c[1] <= b]


async def _run_outage(srv: RedisServer, outage: str) -> Load:
    store = open_counter_store(
        CounterSettings(url=srv.url, connect_timeout=0.1, op_timeout=0.5, pool_size=CALLERS)
    )
    load = Load(store)
    # Connect and load the scripts first: the property is about the outage, not a cold start
    # racing 24 first connections against a 150 ms budget on a loaded machine.
    assert await store.ping()
    tasks = [asyncio.create_task(load.caller(i)) for i in range(CALLERS)]
    try:
        await asyncio.sleep(0.5)
        load.t_down = time.monotonic()
        if outage == "kill":
            srv.kill()
        else:
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(1.0)
        load.t_up = time.monotonic()
        if outage == "kill":
            await asyncio.to_thread(srv.start)
        else:
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGCONT)
        load.t_ready = time.monotonic()
        await asyncio.sleep(2.5)
    finally:
        load.stop = True
        await asyncio.gather(*tasks)
        await store.close()
    return load


def _check(load: Load) -> None:
    t_down, t_up, t_ready = load.t_down, load.t_up, load.t_ready
    errors = [c for c in load.calls if c[2].startswith("error")]
    assert not errors, errors[:5]
    slow = [c for c in load.calls if c[1] > TIMEOUT + MARGIN]
    assert not slow, slow[:5]
    before = load.between(0, t_down)
    assert before and all(c[2] == "allow" for c in before)
    during = load.between(t_down + 0.01, t_up)
    assert len(during) > CALLERS, "the load kept calling during the outage"
    assert all(c[2] == "unavailable" for c in during), {c[2] for c in during}
    first_ok = min(c[0] + c[1] for c in load.calls if c[0] >= t_up and c[2] == "allow")
    assert first_ok - t_ready < 2.0
    tail = load.between(t_ready + 2.0, float("inf"))
    assert tail and all(c[2] == "allow" for c in tail), {c[2] for c in tail}


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
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                await store.reserve(tenant, [rule], timeout=TIMEOUT)
                raise AssertionError("allowed while the owning master was down")
            except CounterStoreUnavailable:
                pass
            assert time.monotonic() - t0 < TIMEOUT + MARGIN
            await asyncio.sleep(0.02)
        await asyncio.to_thread(owner.start)
        t_up = time.monotonic()
        while True:
            try:
                if (await store.reserve(tenant, [rule], timeout=TIMEOUT)).allowed:
                    break
            except CounterStoreUnavailable:
                pass
            # a rebooted cluster master refuses writes for ~2 s by design (Redis's
            # CLUSTER_WRITABLE_DELAY); the store itself retries nothing and needs no restart
            assert time.monotonic() - t_up < 5.0, "no allow within 5 s of the node's return"
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
