"""The counter-store contract: every backend must pass every test here.

Times are moved with the backend's ManualClock. Redis-backed stores follow it too (their
server clock is shifted by the test), but a few real milliseconds pass between steps, so
assertions on durations allow a second of slack and no test sits exactly on an edge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    ReserveResult,
)
from tests.counters.conftest import Backend

TIMEOUT = 2.0
SLACK = 1.0


def cap(
    n: int, scope: str = "tenant:t", tz: str = "UTC", rid: str = "cap@v1", counter_id: str = ""
) -> CounterRule:
    return CounterRule(
        rid, CounterKind.DAILY_CAP, scope, max_count=n, timezone=tz, counter_id=counter_id
    )


def cooldown(seconds: float, scope: str = "tenant:t", rid: str = "cool@v1") -> CounterRule:
    return CounterRule(rid, CounterKind.COOLDOWN, scope, min_interval_seconds=seconds)


def velocity(n: int, window: float, scope: str = "tenant:t", rid: str = "vel@v1") -> CounterRule:
    return CounterRule(rid, CounterKind.VELOCITY, scope, max_count=n, window_seconds=window)


def rollback(
    pct: float, window: float, scope: str = "tenant:t", min_dep: int = 1, rid: str = "rb@v1"
) -> CounterRule:
    return CounterRule(
        rid, CounterKind.ROLLBACK_RATE, scope, window_seconds=window,
        threshold_percent=pct, min_deployments=min_dep,
    )


def min_step(seconds: float, scope: str = "rollout:r1", rid: str = "step@v1") -> CounterRule:
    return CounterRule(rid, CounterKind.MIN_STEP_DURATION, scope, min_interval_seconds=seconds)


async def reserve(b: Backend, *rules: CounterRule, tenant: str | None = None) -> ReserveResult:
    return await b.store.reserve(tenant or b.tenant, rules, timeout=TIMEOUT)


async def event(b: Backend, kind: CounterEventKind, *scopes: str, n: int = 1) -> None:
    for _ in range(n):
        await b.store.record_event(b.tenant, kind, scopes, timeout=TIMEOUT)


def at(b: Backend, iso: str) -> None:
    b.clock.set(dt.datetime.fromisoformat(iso).timestamp())


# -- DAILY_CAP -------------------------------------------------------------------------


async def test_daily_cap_allows_n_then_denies_until_local_midnight(backend: Backend) -> None:
    b = backend
    at(b, "2026-11-23T23:30:00+01:00")
    rule = cap(3, tz="Europe/Berlin")
    for _ in range(3):
        assert (await reserve(b, rule)).allowed
    r = await reserve(b, rule)
    assert not r.allowed
    assert r.code == "DAILY_CAP_EXCEEDED"
    assert r.denied_rule_id == "cap@v1"
    assert r.retry_after_seconds == pytest.approx(1800, abs=SLACK)
    assert "daily cap 3 reached for tenant:t on 2026-11-23 (Europe/Berlin)" in r.message
    assert "frees at 2026-11-24T00:00+01:00" in r.message
    b.clock.advance(1800 + 2)
    assert (await reserve(b, rule)).allowed


async def test_daily_cap_day_is_local_not_utc(backend: Backend) -> None:
    b = backend
    # 23:30 UTC is already the next day in Tokyo, still the same day in New York.
    at(b, "2026-11-23T23:30:00+00:00")
    tokyo, ny = cap(1, tz="Asia/Tokyo", rid="tokyo"), cap(1, tz="America/New_York", rid="ny")
    assert (await reserve(b, tokyo)).allowed
    assert (await reserve(b, ny)).allowed
    b.clock.advance(3600)  # 00:30 UTC: a new UTC day, the same local day in both zones
    r1, r2 = await reserve(b, tokyo), await reserve(b, ny)
    assert not r1.allowed and "2026-11-24 (Asia/Tokyo)" in r1.message
    assert not r2.allowed and "2026-11-23 (America/New_York)" in r2.message
    assert r2.retry_after_seconds == pytest.approx(4.5 * 3600, abs=SLACK)


async def test_daily_cap_dst_short_day(backend: Backend) -> None:
    b = backend
    # 2026-03-08 is a 23-hour day in New York (clocks jump 02:00 -> 03:00).
    at(b, "2026-03-08T00:30:00-05:00")
    rule = cap(1, tz="America/New_York")
    assert (await reserve(b, rule)).allowed
    r = await reserve(b, rule)
    assert not r.allowed
    assert r.retry_after_seconds == pytest.approx(22.5 * 3600, abs=SLACK)
    assert "frees at 2026-03-09T00:00-04:00" in r.message


async def test_daily_cap_zero_never_frees(backend: Backend) -> None:
    r = await reserve(backend, cap(0))
    assert not r.allowed and r.retry_after_seconds is None and r.code == "DAILY_CAP_EXCEEDED"


# -- COOLDOWN --------------------------------------------------------------------------


async def test_cooldown(backend: Backend) -> None:
    b = backend
    rule = cooldown(600)
    assert (await reserve(b, rule)).allowed
    b.clock.advance(100)
    r = await reserve(b, rule)
    assert not r.allowed and r.code == "COOLDOWN_ACTIVE" and r.denied_rule_id == "cool@v1"
    assert r.retry_after_seconds == pytest.approx(500, abs=SLACK)
    assert "cooldown of 10m active for tenant:t" in r.message
    b.clock.advance(502)
    assert (await reserve(b, rule)).allowed
    assert not (await reserve(b, rule)).allowed  # the allowed reserve restarted the cooldown


async def test_cooldown_is_per_scope(backend: Backend) -> None:
    b = backend
    assert (await reserve(b, cooldown(600, scope="agent:a1"))).allowed
    assert (await reserve(b, cooldown(600, scope="agent:a2"))).allowed
    assert not (await reserve(b, cooldown(600, scope="agent:a1"))).allowed


# -- VELOCITY --------------------------------------------------------------------------


async def test_velocity_is_an_exact_sliding_window(backend: Backend) -> None:
    b = backend
    rule = velocity(3, 60)
    for _ in range(3):
        assert (await reserve(b, rule)).allowed
        b.clock.advance(10)
    # now t=30: 3 in the window (t=0, 10, 20)
    r = await reserve(b, rule)
    assert not r.allowed and r.code == "VELOCITY_EXCEEDED"
    assert r.retry_after_seconds == pytest.approx(30, abs=SLACK)
    assert "velocity limit 3 per 1m reached for tenant:t (3 in the window)" in r.message
    b.clock.advance(31.5)  # t=61.5: the t=0 reservation has left the window
    assert (await reserve(b, rule)).allowed
    r = await reserve(b, rule)  # window holds t=10, 20, 61.5
    assert not r.allowed
    assert r.retry_after_seconds == pytest.approx(8.5, abs=SLACK)


async def test_velocity_allows_max_in_any_window(backend: Backend) -> None:
    b = backend
    rule = velocity(5, 100)
    allowed: list[float] = []
    for _ in range(60):
        if (await reserve(b, rule)).allowed:
            allowed.append(b.clock.now())
        b.clock.advance(7)
    for t in allowed:
        assert sum(1 for u in allowed if t <= u < t + 100 - SLACK) <= 5
    assert len(allowed) >= 5 * (60 * 7 // 100)


# -- ROLLBACK_RATE ---------------------------------------------------------------------


async def test_rollback_rate(backend: Backend) -> None:
    b = backend
    rule = rollback(20, 3600)
    assert (await reserve(b, rule)).allowed  # no deployments: no rate, no deny
    await event(b, CounterEventKind.DEPLOY, "tenant:t", n=10)
    await event(b, CounterEventKind.ROLLBACK, "tenant:t", n=2)
    assert (await reserve(b, rule)).allowed  # 20% is not above 20%
    await event(b, CounterEventKind.ROLLBACK, "tenant:t")
    r = await reserve(b, rule)
    assert not r.allowed and r.code == "ROLLBACK_RATE_EXCEEDED" and r.denied_rule_id == "rb@v1"
    assert "rollback rate 30.0% (3 rollbacks / 10 deployments in the last 1h)" in r.message
    assert "above 20%" in r.message
    # every event is in one bucket: it frees when that bucket leaves the window
    assert r.retry_after_seconds is not None
    assert 3600 - SLACK <= r.retry_after_seconds <= 3600 + 300 + SLACK
    b.clock.advance(r.retry_after_seconds + 1)
    assert (await reserve(b, rule)).allowed


async def test_rollback_rate_does_not_count_reserves(backend: Backend) -> None:
    b = backend
    rule = rollback(10, 3600)
    await event(b, CounterEventKind.DEPLOY, "tenant:t")
    await event(b, CounterEventKind.ROLLBACK, "tenant:t")
    for _ in range(3):
        assert not (await reserve(b, rule)).allowed  # denied reserves add no deployments


async def test_rollback_rate_minimum_sample(backend: Backend) -> None:
    b = backend
    rule = rollback(10, 3600, min_dep=5)
    await event(b, CounterEventKind.DEPLOY, "tenant:t", n=4)
    await event(b, CounterEventKind.ROLLBACK, "tenant:t", n=4)
    assert (await reserve(b, rule)).allowed  # 4 deployments < minimum sample of 5
    await event(b, CounterEventKind.DEPLOY, "tenant:t")
    assert not (await reserve(b, rule)).allowed


async def test_rollback_rate_retry_walks_old_buckets_out(backend: Backend) -> None:
    b = backend
    rule = rollback(50, 3600)
    await event(b, CounterEventKind.ROLLBACK, "tenant:t", n=3)  # old bucket: 3 rollbacks
    b.clock.advance(1800)
    await event(b, CounterEventKind.DEPLOY, "tenant:t", n=4)
    r = await reserve(b, rule)  # 3/4 = 75%
    assert not r.allowed
    # frees when the rollback-only bucket leaves (between 1800 and 2100 s from now)
    assert r.retry_after_seconds is not None
    assert 1800 - SLACK <= r.retry_after_seconds <= 2100 + SLACK
    b.clock.advance(r.retry_after_seconds + 1)
    assert (await reserve(b, rule)).allowed


async def test_rollback_events_are_per_scope_and_deduplicated(backend: Backend) -> None:
    b = backend
    await b.store.record_event(
        b.tenant, CounterEventKind.DEPLOY, ["group:a", "group:a", "group:b"], timeout=TIMEOUT
    )
    await b.store.record_event(b.tenant, CounterEventKind.ROLLBACK, ["group:a"], timeout=TIMEOUT)
    ra = await reserve(b, rollback(50, 3600, scope="group:a"))
    assert not ra.allowed and "1 rollbacks / 1 deployments" in ra.message
    assert (await reserve(b, rollback(50, 3600, scope="group:b"))).allowed


async def test_rollback_window_longer_than_retention_is_rejected(backend: Backend) -> None:
    with pytest.raises(ValueError, match="retention"):
        await reserve(backend, rollback(10, 30 * 86400))


# -- MIN_STEP_DURATION -----------------------------------------------------------------


async def test_min_step_duration(backend: Backend) -> None:
    b = backend
    rule = min_step(900)
    assert (await reserve(b, rule)).allowed  # no advance recorded yet
    assert (await reserve(b, rule)).allowed  # reserving does not consume it
    await event(b, CounterEventKind.STEP_ADVANCE, "rollout:r1")
    b.clock.advance(300)
    r = await reserve(b, rule)
    assert not r.allowed and r.code == "MIN_STEP_DURATION" and r.denied_rule_id == "step@v1"
    assert r.retry_after_seconds == pytest.approx(600, abs=SLACK)
    assert "minimum step duration 15m not reached for rollout:r1" in r.message
    assert (await reserve(b, min_step(900, scope="rollout:r2"))).allowed
    b.clock.advance(602)
    assert (await reserve(b, rule)).allowed


# -- atomicity and ordering ------------------------------------------------------------


async def test_nothing_is_consumed_when_any_rule_denies(backend: Backend) -> None:
    b = backend
    daily, cool, vel = cap(2), cooldown(600, scope="agent:a"), velocity(5, 3600)
    assert (await reserve(b, cool)).allowed  # cooldown now active for agent:a
    for _ in range(5):
        r = await reserve(b, daily, vel, cool)
        assert not r.allowed and r.code == "COOLDOWN_ACTIVE"
    # neither the cap nor the velocity window was touched by the denied decisions
    assert (await reserve(b, daily, vel)).allowed
    assert (await reserve(b, daily, vel)).allowed
    r = await reserve(b, daily, vel)
    assert not r.allowed and r.code == "DAILY_CAP_EXCEEDED"


async def test_first_denying_rule_in_order_is_reported(backend: Backend) -> None:
    b = backend
    assert (await reserve(b, cap(1), cooldown(60))).allowed
    assert (await reserve(b, cap(1), cooldown(60))).code == "DAILY_CAP_EXCEEDED"
    assert (await reserve(b, cooldown(60), cap(1))).code == "COOLDOWN_ACTIVE"


async def test_no_rules_is_allowed(backend: Backend) -> None:
    assert (await reserve(backend)).allowed


async def test_duplicate_rule_in_one_decision_counts_once(backend: Backend) -> None:
    b = backend
    rule = cap(2)
    assert (await reserve(b, rule, rule)).allowed
    assert (await reserve(b, rule)).allowed
    assert not (await reserve(b, rule)).allowed


async def test_counters_are_per_tenant_and_per_counter(backend: Backend) -> None:
    b = backend
    assert (await reserve(b, cap(1))).allowed
    assert (await reserve(b, cap(1), tenant=b.tenant + "-other")).allowed
    assert (await reserve(b, cap(1, rid="other@v1"))).allowed
    # a new version of the same policy keeps its counter when counter_id is stable
    v1 = cap(1, rid="p@v1", counter_id="p")
    v2 = cap(1, rid="p@v2", counter_id="p")
    assert (await reserve(b, v1)).allowed
    r = await reserve(b, v2)
    assert not r.allowed and r.denied_rule_id == "p@v2"


async def test_awkward_names_do_not_collide(backend: Backend) -> None:
    b = backend
    t = b.tenant + "{x}:y%"
    a = CounterRule("a:b", CounterKind.DAILY_CAP, "c", max_count=1)
    c = CounterRule("a", CounterKind.DAILY_CAP, "b:c", max_count=1)
    assert (await reserve(b, a, tenant=t)).allowed
    assert (await reserve(b, c, tenant=t)).allowed
    assert not (await reserve(b, a, tenant=t)).allowed


# -- batches -----------------------------------------------------------------------------


async def test_batch_consumes_in_order(backend: Backend) -> None:
    b = backend
    daily = cap(5)
    items = [[daily, cooldown(3600, scope=f"agent:a{i}")] for i in range(8)]
    res = await b.store.reserve_batch(b.tenant, items, timeout=TIMEOUT)
    assert [r.allowed for r in res] == [True] * 5 + [False] * 3
    assert {r.code for r in res[5:]} == {"DAILY_CAP_EXCEEDED"}
    # denied items consumed nothing: their agents' cooldowns are free
    assert (await reserve(b, cooldown(3600, scope="agent:a6"))).allowed
    assert not (await reserve(b, cooldown(3600, scope="agent:a0"))).allowed


def test_a_rescoped_rule_is_the_same_rule_at_another_scope() -> None:
    r = CounterRule("r@v2", CounterKind.ROLLBACK_RATE, "agent:a", max_count=3,
                    window_seconds=60.0, min_interval_seconds=5.0, timezone="Europe/Berlin",
                    threshold_percent=12.5, min_deployments=4, counter_id="r")
    other = r.rescoped("agent:b")
    fresh = dataclasses.replace(r, scope_key="agent:b")
    assert other == fresh and hash(other) == hash(fresh)
    assert [f.name for f in dataclasses.fields(CounterRule)
            if getattr(other, f.name) != getattr(r, f.name)] == ["scope_key"]
    with pytest.raises(ValueError, match="empty scope"):
        r.rescoped("")


async def test_batch_of_per_agent_rules_made_by_rescoping(backend: Backend) -> None:
    """What the engine sends for a step with a per-agent cooldown: one rule rescoped per
    agent (distinct objects of one shape) beside one shared cap rule."""
    b = backend
    daily, cool = cap(10), cooldown(3600, scope="agent:a0")
    items = [[daily, cool.rescoped(f"agent:a{i}")] for i in range(4)]
    items.append([daily, cool.rescoped("agent:a2")])  # the same agent twice in a step
    res = await b.store.reserve_batch(b.tenant, items, timeout=TIMEOUT)
    assert [r.code for r in res] == ["", "", "", "", "COOLDOWN_ACTIVE"]
    assert not (await reserve(b, cooldown(3600, scope="agent:a3"))).allowed
    assert (await reserve(b, cooldown(3600, scope="agent:a4"))).allowed


async def test_batch_cooldowns_past_one_read(backend: Backend) -> None:
    """A step larger than the store reads at once (Redis reads a step's cooldowns up front,
    1 000 keys per MGET): earlier reservations on either side of the boundary deny, and an
    agent listed twice is denied the second time, after the boundary too."""
    b = backend
    cool = cooldown(3600, scope="agent:a0")
    earlier = [0, 9, 999, 1000, 1500]
    res = await b.store.reserve_batch(
        b.tenant, [[cool.rescoped(f"agent:a{i}")] for i in earlier], timeout=TIMEOUT)
    assert all(r.allowed for r in res)
    names = [f"agent:a{i}" for i in range(2100)] + ["agent:a2050", "agent:a5"]
    res = await b.store.reserve_batch(b.tenant, [[cool.rescoped(n)] for n in names],
                                      timeout=10)
    denied = [n for n, r in zip(names, res, strict=True) if not r.allowed]
    assert denied == [f"agent:a{i}" for i in earlier] + ["agent:a2050", "agent:a5"]
    assert {r.code for r in res if not r.allowed} == {"COOLDOWN_ACTIVE"}


async def test_batch_item_is_all_or_nothing(backend: Backend) -> None:
    b = backend
    daily = cap(3)
    items = [
        [daily, cooldown(60, scope="agent:a")],
        [daily, cooldown(60, scope="agent:a")],  # cooldown denies: must not eat a cap slot
        [daily, cooldown(60, scope="agent:b")],
        [daily, cooldown(60, scope="agent:c")],
        [daily, cooldown(60, scope="agent:d")],  # cap exhausted
    ]
    res = await b.store.reserve_batch(b.tenant, items, timeout=TIMEOUT)
    assert [r.allowed for r in res] == [True, False, True, True, False]
    assert [r.code for r in res] == ["", "COOLDOWN_ACTIVE", "", "", "DAILY_CAP_EXCEEDED"]


async def test_batch_velocity_counts_its_own_entries(backend: Backend) -> None:
    """Entries a step adds count for the later agents of the same step, the retry of a deny
    is measured from the oldest entry in force (this step's own), and the next calls see
    every entry."""
    b = backend
    rule = velocity(5, 60)
    res = await b.store.reserve_batch(b.tenant, [[rule]] * 8, timeout=TIMEOUT)
    assert [r.allowed for r in res] == [True] * 5 + [False] * 3
    assert {r.code for r in res[5:]} == {"VELOCITY_EXCEEDED"}
    assert all(r.retry_after_seconds == pytest.approx(60, abs=SLACK) for r in res[5:])
    assert not (await reserve(b, rule)).allowed
    b.clock.advance(61)
    many = velocity(25, 60, rid="many@v1")
    for _ in range(2):
        res = await b.store.reserve_batch(b.tenant, [[many]] * 10, timeout=TIMEOUT)
        assert all(r.allowed for r in res)
    res = await b.store.reserve_batch(b.tenant, [[many]] * 10, timeout=TIMEOUT)
    assert [r.allowed for r in res] == [True] * 5 + [False] * 5


async def test_batch_cap_counts_its_own_consumption(backend: Backend) -> None:
    b = backend
    daily = cap(30)
    for _ in range(2):
        res = await b.store.reserve_batch(b.tenant, [[daily]] * 12, timeout=TIMEOUT)
        assert all(r.allowed for r in res)
    res = await b.store.reserve_batch(b.tenant, [[daily]] * 12, timeout=TIMEOUT)
    assert [r.allowed for r in res] == [True] * 6 + [False] * 6


async def test_empty_batch(backend: Backend) -> None:
    assert await backend.store.reserve_batch(backend.tenant, [], timeout=TIMEOUT) == []


async def test_large_batch(backend: Backend) -> None:
    b = backend
    daily = cap(700)
    items = [[daily, velocity(1, 3600, scope=f"agent:{i}")] for i in range(1000)]
    res = await b.store.reserve_batch(b.tenant, items, timeout=10)
    assert sum(r.allowed for r in res) == 700
    assert all(r.allowed for r in res[:700])


# -- bounded state -----------------------------------------------------------------------


async def test_every_key_expires_with_its_window(backend: Backend) -> None:
    b = backend
    at(b, "2026-11-23T22:00:00+00:00")
    await reserve(b, cap(5), cooldown(600), velocity(5, 1800))
    await event(b, CounterEventKind.DEPLOY, "tenant:t")
    await event(b, CounterEventKind.ROLLBACK, "tenant:t")
    await event(b, CounterEventKind.STEP_ADVANCE, "rollout:r1")
    ttls = await b.key_ttls()
    # Redis also holds the tenant's epoch marker, the one key without a TTL (its absence
    # is what tells a lost store); the in-process store has none.
    marker = ttls.pop(f"pdp:{{{b.tenant}}}:epoch", "absent")
    assert marker == ("absent" if b.name == "memory" else None)
    # Redis: each script call that changed something leaves its id for 10 s, so a retry of
    # the same call (its reply lost with the connection) does nothing (reserve.lua)
    calls = {k: t for k, t in ttls.items() if ":call:" in k}
    assert all(t is not None and 0 < t <= 10 for t in calls.values()), calls
    assert len(calls) == (0 if b.name == "memory" else 4), calls
    ttls = {k: t for k, t in ttls.items() if k not in calls}
    assert len(ttls) == 5, ttls
    assert all(t is not None and t > 0 for t in ttls.values()), ttls
    by_kind = {k.split(":")[2]: t for k, t in ttls.items()}
    assert by_kind["cap"] == pytest.approx(7200, abs=SLACK)  # until midnight UTC
    # cooldown stamps and velocity pushes are kept for the store's history (a week), longer
    # than these windows: a new version of the policy may lengthen them (test_versions.py)
    history = getattr(b.store, "history_seconds", 0)
    assert history == 7 * 86400
    assert by_kind["cool"] == pytest.approx(history, abs=SLACK)
    assert by_kind["vel"] == pytest.approx(history, abs=SLACK)
    retention = getattr(b.store, "event_retention_seconds", 0)
    assert by_kind["step"] == pytest.approx(retention, abs=SLACK)
    assert retention <= (by_kind["ev"] or 0) <= retention + 300 + SLACK


async def test_peek_gives_the_verdict_and_consumes_nothing(backend: Backend) -> None:
    """Drafts' counter rules ask with ``peek``: the same verdict as a reservation, with no
    slot taken, so a draft never changes a live counter."""
    rules = (cap(2), cooldown(60), velocity(5, 600))
    for _ in range(5):
        assert (await backend.store.peek(backend.tenant, rules, timeout=TIMEOUT)).allowed
    assert (await reserve(backend, *rules)).allowed  # the first real slot is still there
    peeked = await backend.store.peek(backend.tenant, rules, timeout=TIMEOUT)
    assert not peeked.allowed and peeked.denied_rule_id == "cool@v1"
    # One reservation was counted, not six: the cap of 2 has exactly one slot left.
    assert (await reserve(backend, cap(2))).allowed
    assert not (await reserve(backend, cap(2))).allowed


# -- idempotent events (event_key) ---------------------------------------------------------


async def keyed(b: Backend, kind: CounterEventKind, key: str | None, *scopes: str,
                tenant: str | None = None) -> bool:
    return await b.store.record_event(
        tenant or b.tenant, kind, scopes or ("tenant:t",), timeout=TIMEOUT, event_key=key
    )


async def test_a_rollback_reported_many_times_counts_once(backend: Backend) -> None:
    """Issue 18: three health queries seeing the same bad step, then the rollout engine's
    own report of that rollback, are one rollback."""
    b = backend
    rule = rollback(40, 3600, min_dep=4)
    await event(b, CounterEventKind.DEPLOY, "tenant:t", n=4)
    assert await keyed(b, CounterEventKind.ROLLBACK, "rollback:r1:3")
    for _ in range(3):
        assert not await keyed(b, CounterEventKind.ROLLBACK, "rollback:r1:3")
    assert (await reserve(b, rule)).allowed  # 1 / 4 = 25%, not 75% or 100%
    r = await reserve(b, rollback(20, 3600, min_dep=4))
    assert not r.allowed and "1 rollbacks / 4 deployments" in r.message


async def test_event_keys_are_per_key_kind_and_tenant(backend: Backend) -> None:
    b = backend
    assert await keyed(b, CounterEventKind.ROLLBACK, "k1")
    assert await keyed(b, CounterEventKind.ROLLBACK, "k2")  # another rollback
    assert await keyed(b, CounterEventKind.DEPLOY, "k1")  # another kind of event
    assert await keyed(b, CounterEventKind.ROLLBACK, "k1", tenant=b.tenant + "-other")
    assert not await keyed(b, CounterEventKind.ROLLBACK, "k1")
    r = await reserve(b, rollback(50, 3600))
    assert not r.allowed and "2 rollbacks / 1 deployments" in r.message


async def test_events_without_a_key_always_count(backend: Backend) -> None:
    b = backend
    for key in (None, None, "", ""):  # "" is no key (a proto field left empty)
        assert await keyed(b, CounterEventKind.ROLLBACK, key)
    await event(b, CounterEventKind.DEPLOY, "tenant:t", n=2)
    r = await reserve(b, rollback(50, 3600))
    assert not r.allowed and "4 rollbacks / 2 deployments" in r.message


async def test_a_keyed_event_counts_once_under_every_scope(backend: Backend) -> None:
    """Once per scope: a second report of the same event that names another scope (the
    rollout engine's, with the agent, after EvaluateHealth's, with the tenant and rollout)
    adds it there, and counts nowhere twice."""
    b = backend
    assert await keyed(b, CounterEventKind.ROLLBACK, "rb:1", "group:a", "group:b")
    assert await keyed(b, CounterEventKind.ROLLBACK, "rb:1", "group:a", "group:c")
    assert not await keyed(b, CounterEventKind.ROLLBACK, "rb:1", "group:b", "group:c")
    await b.store.record_event(b.tenant, CounterEventKind.DEPLOY, ["group:a", "group:b",
                                                                   "group:c", "group:d"],
                               timeout=TIMEOUT)
    for scope, rbs in (("group:a", 1), ("group:b", 1), ("group:c", 1), ("group:d", 0)):
        r = await reserve(b, rollback(50, 3600, scope=scope))
        assert r.allowed == (rbs == 0), (scope, r)
        if rbs:
            assert "1 rollbacks / 1 deployments" in r.message, (scope, r)


async def test_a_step_advance_with_a_key_is_recorded_once(backend: Backend) -> None:
    b = backend
    assert await keyed(b, CounterEventKind.STEP_ADVANCE, "r1:2", "rollout:r1")
    b.clock.advance(600)
    # a late duplicate of the same advance must not restart the step's clock
    assert not await keyed(b, CounterEventKind.STEP_ADVANCE, "r1:2", "rollout:r1")
    assert (await reserve(b, min_step(500))).allowed


async def test_event_keys_are_kept_for_the_event_retention(backend: Backend) -> None:
    b = backend
    assert await keyed(b, CounterEventKind.ROLLBACK, "awkward:{key}%")
    ttls = await b.key_ttls()
    seen = [t for k, t in ttls.items() if ":evid:" in k]
    retention = getattr(b.store, "event_retention_seconds", 0)
    assert len(seen) == 1 and seen[0] == pytest.approx(retention, abs=SLACK), ttls
    assert not await keyed(b, CounterEventKind.ROLLBACK, "awkward:{key}%")


async def test_no_scope_records_nothing(backend: Backend) -> None:
    b = backend
    assert not await b.store.record_event(b.tenant, CounterEventKind.ROLLBACK, [],
                                          timeout=TIMEOUT, event_key="k")
    assert await keyed(b, CounterEventKind.ROLLBACK, "k")  # the key was not taken
