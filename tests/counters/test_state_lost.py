"""Counter state loss: a Redis that comes back empty must not reopen caps and cooldowns.

Real ``redis-server`` processes, restarted without persistence (kill + start on the same
port) or emptied (FLUSHALL, or the tenant's keys deleted on its Cluster node: a failover
to an empty replica). Time moves with the store's ManualClock, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from pdp.cli import main as cli_main
from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStateChange,
    CounterStateLost,
    CounterStoreUnavailable,
    ManualClock,
    RedisCounterStore,
)
from pdp.counters.ack import acknowledge
from pdp.counters.keys import tenant_prefix
from pdp.counters.redis_store import make_client
from tests.counters.conftest import RETENTION, T0, new_tenant, shifted
from tests.support.procs import RedisCluster, RedisServer

TIMEOUT = 2.0
CAP = CounterRule("cap@v1", CounterKind.DAILY_CAP, "tenant:t", max_count=1)
COOL = CounterRule("cool@v1", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=600)


class Hooks:
    """What the store told its metric and audit hooks."""

    def __init__(self) -> None:
        self.lost: list[CounterStateChange] = []
        self.audit: list[dict[str, Any]] = []

    def kwargs(self) -> dict[str, Any]:
        return {"on_state_lost": self.lost.append, "on_audit_event": self.audit.append}

    def types(self) -> list[str]:
        return [e["type"] for e in self.audit]


class Sidecars:
    """Stores on one Redis, each like a sidecar process with its own memory."""

    def __init__(self, url: str, clock: ManualClock, cluster: bool = False) -> None:
        self.url, self.clock, self.cluster = url, clock, cluster
        self.stores: list[RedisCounterStore] = []

    def new(self, hooks: Hooks | None = None, **kw: Any) -> RedisCounterStore:
        store = RedisCounterStore(
            make_client(CounterSettings(url=self.url, cluster=self.cluster)),
            clock=self.clock, event_bucket_seconds=300, event_retention_seconds=RETENTION,
            server_time_offset=shifted(self.clock), **(hooks.kwargs() if hooks else {}), **kw,
        )
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for s in self.stores:
            await s.close()


@pytest.fixture
def srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def fleet(srv: RedisServer) -> AsyncIterator[Sidecars]:
    f = Sidecars(srv.url, ManualClock(T0))
    try:
        yield f
    finally:
        await f.close()


async def raw_keys(url: str, tenant: str) -> dict[str, str]:
    async with aioredis.Redis.from_url(url, decode_responses=True) as r:
        return {str(k): str(await r.get(k)) for k in await r.keys(f"{tenant_prefix(tenant)}*")}


async def ack(url: str, *tenants: str) -> list[Any]:
    client = make_client(CounterSettings(url=url))
    try:
        return await acknowledge(client, tenants or None)
    finally:
        await client.aclose()


async def lose_state(srv: RedisServer, how: str) -> None:
    if how == "restart":  # no persistence: the process comes back empty
        srv.kill()
        srv.start()
    else:
        async with aioredis.Redis.from_url(srv.url) as r:
            await r.flushall()


async def test_a_fresh_store_is_not_a_loss(fleet: Sidecars, srv: RedisServer) -> None:
    hooks = Hooks()
    a, b = fleet.new(hooks), fleet.new(hooks)
    tenant = new_tenant()
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    assert not (await b.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed  # same counters
    assert (await b.peek(tenant, [COOL], timeout=TIMEOUT)).allowed
    marker = (await raw_keys(srv.url, tenant))[f"{tenant_prefix(tenant)}:epoch"]
    assert marker.startswith("f:")  # created once, on first use, and adopted by the other
    assert hooks.lost == [] and hooks.audit == []


@pytest.mark.parametrize("how", ["restart", "flushall"])
async def test_loss_denies_until_acknowledged(
    fleet: Sidecars, srv: RedisServer, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = Hooks()
    a = fleet.new(hooks)
    tenant, other = new_tenant(), new_tenant()
    assert (await a.reserve(tenant, [CAP, COOL], timeout=TIMEOUT)).allowed
    assert not (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed

    await lose_state(srv, how)

    for call in (
        a.reserve(tenant, [CAP], timeout=TIMEOUT),
        a.reserve_batch(tenant, [[CAP], [COOL]], timeout=TIMEOUT),
        a.peek(tenant, [COOL], timeout=TIMEOUT),
    ):
        with pytest.raises(CounterStateLost) as info:
            await call
        e = info.value
        assert isinstance(e, CounterStoreUnavailable)
        assert e.code == "COUNTER_STATE_LOST" and e.tenant == tenant
        assert f"counter state lost for tenant {tenant!r}" in str(e)
        assert "pdp counters ack --redis-url" in str(e)
    # noticed once: one metric call, one audit event; nothing was reserved meanwhile
    assert [c.tenant for c in hooks.lost] == [tenant]
    assert hooks.lost[0].kind == "lost" and hooks.lost[0].previous_epoch.startswith("f:")
    assert hooks.lost[0].found_epoch == "" and hooks.lost[0].resumes_at is None
    assert hooks.types() == ["Counters.StateLost"]
    assert hooks.audit[0]["tenant"] == tenant and hooks.audit[0]["mode"] == "deny"
    assert list(await raw_keys(srv.url, tenant)) == [f"{tenant_prefix(tenant)}:lost"]
    assert a.state_losses() == {tenant: pytest.approx(T0)}

    # a sidecar started after the loss was flagged denies too; a tenant first used now
    # is brand new (never seen by anyone) and starts fine
    late = fleet.new()
    with pytest.raises(CounterStateLost):
        await late.reserve(tenant, [CAP], timeout=TIMEOUT)
    assert (await a.reserve(other, [CAP], timeout=TIMEOUT)).allowed

    # the admin acknowledges through the CLI: every sidecar resumes on its next call
    assert await asyncio.to_thread(cli_main, ["counters", "ack", "--redis-url", srv.url]) == 0
    out = capsys.readouterr().out
    assert f"tenant {tenant!r}: loss noticed at" in out and other not in out
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed  # counts from zero
    assert not (await late.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    assert (await late.peek(tenant, [COOL], timeout=TIMEOUT)).allowed
    assert hooks.types() == ["Counters.StateLost", "Counters.StateRestored"]
    assert hooks.audit[1]["how"] == "ack" and hooks.audit[1]["found_epoch"].startswith("a:")
    assert a.state_losses() == {}
    assert f"{tenant_prefix(tenant)}:lost" not in await raw_keys(srv.url, tenant)

    # nothing left to acknowledge
    assert await asyncio.to_thread(cli_main, ["counters", "ack", "--redis-url", srv.url]) == 0
    assert "nothing to do" in capsys.readouterr().out


async def test_a_loss_seen_by_its_marker_being_replaced(
    fleet: Sidecars, srv: RedisServer
) -> None:
    """A sidecar that started after an unnoticed loss makes a new first-use marker (it
    cannot know better); one that saw the old marker still notices."""
    a, fresh = fleet.new(), fleet.new()
    tenant = new_tenant()
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    await lose_state(srv, "flushall")
    assert (await fresh.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    with pytest.raises(CounterStateLost, match="holds a new marker"):
        await a.reserve(tenant, [CAP], timeout=TIMEOUT)
    # acknowledging one named tenant
    done = await ack(srv.url, tenant)
    assert [d.tenant for d in done] == [tenant] and done[0].noticed is not None
    assert not (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed  # fresh's slot


async def test_wait_mode_resumes_after_the_longest_window(
    fleet: Sidecars, srv: RedisServer
) -> None:
    hooks = Hooks()
    a = fleet.new(hooks, state_lost="wait")
    deny = fleet.new()  # another sidecar, in the default deny mode
    tenant = new_tenant()
    long_cool = CounterRule("long@v1", CounterKind.COOLDOWN, "agent:a",
                            min_interval_seconds=3 * RETENTION)  # longer than a day
    assert (await a.reserve(tenant, [long_cool], timeout=TIMEOUT)).allowed
    assert (await deny.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    await lose_state(srv, "restart")

    with pytest.raises(CounterStateLost) as info:
        await a.reserve(tenant, [CAP], timeout=TIMEOUT)
    resumes = hooks.lost[0].resumes_at
    assert resumes == pytest.approx(T0 + 3 * RETENTION)  # the longest window seen
    assert "state_lost=wait" in str(info.value)
    assert hooks.audit[0]["resumes_at"].endswith("Z")

    fleet.clock.advance(2 * RETENTION)  # past a day, not the cooldown
    with pytest.raises(CounterStateLost):
        await a.peek(tenant, [CAP], timeout=TIMEOUT)
    fleet.clock.advance(RETENTION + 1)
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    assert hooks.types() == ["Counters.StateLost", "Counters.StateRestored"]
    assert hooks.audit[1]["how"] == "wait"
    keys = await raw_keys(srv.url, tenant)
    assert keys[f"{tenant_prefix(tenant)}:epoch"].startswith("w:")
    assert f"{tenant_prefix(tenant)}:lost" not in keys
    # the deny-mode sidecar never noticed; the re-created marker is an acknowledgement
    assert not (await deny.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed


async def test_wait_mode_waits_at_least_a_day(fleet: Sidecars, srv: RedisServer) -> None:
    """A sidecar that has only used short windows still waits out a daily cap it may not
    have seen (25 hours: the longest local day)."""
    hooks = Hooks()
    a = fleet.new(hooks, state_lost="wait")
    tenant = new_tenant()
    assert (await a.reserve(tenant, [COOL], timeout=TIMEOUT)).allowed
    await lose_state(srv, "flushall")
    with pytest.raises(CounterStateLost):
        await a.reserve(tenant, [COOL], timeout=TIMEOUT)
    assert hooks.lost[0].resumes_at == pytest.approx(T0 + 25 * 3600)
    fleet.clock.advance(25 * 3600 - 60)
    with pytest.raises(CounterStateLost):
        await a.reserve(tenant, [COOL], timeout=TIMEOUT)
    fleet.clock.advance(120)
    assert (await a.reserve(tenant, [COOL], timeout=TIMEOUT)).allowed


async def test_the_old_marker_coming_back_ends_the_loss(
    fleet: Sidecars, srv: RedisServer
) -> None:
    """A failover back to the primary that still had the data is no loss any more."""
    hooks = Hooks()
    a = fleet.new(hooks)
    tenant = new_tenant()
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    saved = await raw_keys(srv.url, tenant)
    await lose_state(srv, "flushall")
    with pytest.raises(CounterStateLost):
        await a.reserve(tenant, [CAP], timeout=TIMEOUT)
    async with aioredis.Redis.from_url(srv.url) as r:
        await r.flushall()
        await r.mset(saved)
    assert not (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed  # the cap is back
    assert hooks.types() == ["Counters.StateLost", "Counters.StateRestored"]
    assert hooks.audit[1]["how"] == "marker_back"


async def test_a_failing_hook_does_not_hide_the_loss(fleet: Sidecars, srv: RedisServer) -> None:
    def boom(_: Any) -> None:
        raise RuntimeError("metrics backend down")

    a = fleet.new(on_state_lost=boom, on_audit_event=boom)
    tenant = new_tenant()
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    await lose_state(srv, "flushall")
    with pytest.raises(CounterStateLost):
        await a.reserve(tenant, [CAP], timeout=TIMEOUT)


async def test_cluster_slot_emptied_is_a_loss_for_its_tenant_only(
    redis_cluster: RedisCluster,
) -> None:
    """A failover to an empty replica loses the slots of one node: their tenants only."""
    fleet = Sidecars(redis_cluster.url, ManualClock(T0), cluster=True)
    try:
        a = fleet.new()
        tenant, other = new_tenant(), new_tenant()
        for t in (tenant, other):
            assert (await a.reserve(t, [CAP], timeout=TIMEOUT)).allowed
        for node in redis_cluster.nodes:  # the tenant's keys, wherever its slot lives
            async with aioredis.Redis.from_url(node.url) as r:
                for k in await r.keys(f"{tenant_prefix(tenant)}*"):
                    await r.delete(k)
        with pytest.raises(CounterStateLost):
            await a.reserve(tenant, [CAP], timeout=TIMEOUT)
        assert not (await a.reserve(other, [CAP], timeout=TIMEOUT)).allowed  # untouched
        client = make_client(CounterSettings(url=redis_cluster.url, cluster=True))
        try:
            done = await acknowledge(client)
        finally:
            await client.aclose()
        assert tenant in [d.tenant for d in done] and other not in [d.tenant for d in done]
        assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    finally:
        await fleet.close()


async def test_awkward_tenant_names_round_trip_through_ack(
    fleet: Sidecars, srv: RedisServer
) -> None:
    a = fleet.new()
    tenant = new_tenant() + "{x}:y%3A"
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
    await lose_state(srv, "flushall")
    with pytest.raises(CounterStateLost):
        await a.reserve(tenant, [CAP], timeout=TIMEOUT)
    assert [d.tenant for d in await ack(srv.url)] == [tenant]
    assert (await a.reserve(tenant, [CAP], timeout=TIMEOUT)).allowed
