"""A counter across versions of its policy: a new version may lengthen or shorten a cooldown
or velocity window, and the stored counter (named by the policy, not the version) must
answer for the version in force. Run against every backend (memory, Redis, Redis Cluster).

Before the fix each push was kept only as long as the window of the version that recorded
it, so a version that lengthened the window forgot the pushes in between.
"""

from __future__ import annotations

import pytest

from pdp.counters import CounterKind, CounterRule, MemoryCounterStore
from pdp.counters import common as counters_common
from pdp.counters import redis_store as counters_redis
from tests.counters.conftest import Backend
from tests.counters.test_contract import SLACK, cap, reserve

MIN = 60.0
DAY = 86400.0
WEEK = 7 * DAY


def cool(minutes: float, version: int, *, history: float = 0.0,
         scope: str = "agent:a1") -> CounterRule:
    return CounterRule(f"cool@v{version}", CounterKind.COOLDOWN, scope,
                       min_interval_seconds=minutes * MIN, counter_id="cool",
                       history_seconds=history)


def vel(n: int, minutes: float, version: int, *, scope: str = "tenant:t") -> CounterRule:
    return CounterRule(f"vel@v{version}", CounterKind.VELOCITY, scope, max_count=n,
                       window_seconds=minutes * MIN, counter_id="vel")


async def test_a_longer_cooldown_sees_the_push_before_it(backend: Backend) -> None:
    b = backend
    assert (await reserve(b, cool(10, 1))).allowed
    b.clock.advance(30 * MIN)
    assert (await reserve(b, cool(10, 1, scope="agent:a2"))).allowed  # v1 elsewhere: fine
    r = await reserve(b, cool(60, 2))  # v2: 60 minutes; the push was 30 minutes ago
    assert not r.allowed and r.code == "COOLDOWN_ACTIVE" and r.denied_rule_id == "cool@v2"
    assert r.retry_after_seconds == pytest.approx(30 * MIN, abs=SLACK)
    b.clock.advance(30 * MIN + 2)
    assert (await reserve(b, cool(60, 2))).allowed


async def test_a_shorter_cooldown_frees_at_once(backend: Backend) -> None:
    b = backend
    assert (await reserve(b, cool(60, 1))).allowed
    b.clock.advance(20 * MIN)
    assert not (await reserve(b, cool(60, 1))).allowed
    assert (await reserve(b, cool(10, 2))).allowed  # 20 minutes since: past v2's 10
    r = await reserve(b, cool(10, 2))
    assert not r.allowed
    assert r.retry_after_seconds == pytest.approx(10 * MIN, abs=SLACK)


async def test_a_longer_velocity_window_counts_the_pushes_before_it(backend: Backend) -> None:
    b = backend
    for _ in range(3):
        assert (await reserve(b, vel(3, 10, 1))).allowed
        b.clock.advance(MIN)
    b.clock.advance(17 * MIN)  # pushes at 0, 1, 2 minutes; now 20 minutes
    assert (await reserve(b, vel(3, 10, 1))).allowed  # v1's window is empty again
    # v2: 5 per hour; 4 in the last hour, so one more, then the oldest must leave
    assert (await reserve(b, vel(5, 60, 2))).allowed
    r = await reserve(b, vel(5, 60, 2))
    assert not r.allowed and r.code == "VELOCITY_EXCEEDED" and r.denied_rule_id == "vel@v2"
    assert "(5 in the window)" in r.message
    assert r.retry_after_seconds == pytest.approx(40 * MIN, abs=SLACK)
    b.clock.advance(40 * MIN + 2)  # the push at 0 has left v2's window
    assert (await reserve(b, vel(5, 60, 2))).allowed


async def test_a_shorter_velocity_window_counts_only_its_own(backend: Backend) -> None:
    b = backend
    for _ in range(5):
        assert (await reserve(b, vel(5, 60, 1))).allowed
        b.clock.advance(MIN)
    assert not (await reserve(b, vel(5, 60, 1))).allowed
    b.clock.advance(5 * MIN)  # pushes at 0..4 minutes, now 10 minutes
    for _ in range(2):
        assert (await reserve(b, vel(2, 5, 2))).allowed
    r = await reserve(b, vel(2, 5, 2))
    assert not r.allowed and "(2 in the window)" in r.message
    assert r.retry_after_seconds == pytest.approx(5 * MIN, abs=SLACK)


async def test_history_is_bounded_by_the_store_setting(backend: Backend) -> None:
    """Pushes are kept for the store's history (a week by default) or the rule's window if
    longer, and no longer: the keys still expire (memory and Redis stay bounded)."""
    b = backend
    assert getattr(b.store, "history_seconds", None) == WEEK
    assert (await reserve(b, cool(10, 1), vel(3, 10, 1))).allowed
    assert (await reserve(b, cool(9 * 24 * 60, 1, scope="agent:a2"))).allowed
    ttls = {k.split(":")[-1]: t for k, t in (await b.key_ttls()).items()
            if ":cool:" in k or ":vel:" in k}
    assert ttls == {"agent%3Aa1": pytest.approx(WEEK, abs=SLACK),
                    "tenant%3At": pytest.approx(WEEK, abs=SLACK),
                    "agent%3Aa2": pytest.approx(9 * DAY, abs=SLACK)}
    b.clock.advance(WEEK - 10)
    r = await reserve(b, cool(8 * 24 * 60, 2))
    assert not r.allowed
    assert r.retry_after_seconds == pytest.approx(DAY + 10, abs=SLACK)


async def test_a_rule_asks_for_a_longer_history(backend: Backend) -> None:
    """``history_seconds`` on the rule (the engine sets it when another version of the
    policy, e.g. a draft, has a longer window) keeps the push past the store's week."""
    b = backend
    assert (await reserve(b, cool(10, 1, history=10 * DAY))).allowed
    ttl = next(t for k, t in (await b.key_ttls()).items() if ":cool:" in k)
    assert ttl == pytest.approx(10 * DAY, abs=SLACK)
    b.clock.advance(9 * DAY)
    r = await reserve(b, cool(10 * 24 * 60, 2))
    assert not r.allowed
    assert r.retry_after_seconds == pytest.approx(DAY, abs=SLACK)


async def test_velocity_history_keeps_only_the_newest_pushes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A velocity set keeps, beyond its window, only its newest ``HISTORY_MAX_ENTRIES``
    pushes (or max_count, if larger): memory stays bounded, and a later version with a
    max_count up to that many is still judged exactly."""
    monkeypatch.setattr(counters_common, "HISTORY_MAX_ENTRIES", 3)
    counters_redis._definition.cache_clear()
    try:
        b = backend
        for _ in range(6):
            assert (await reserve(b, vel(1, 1, 1))).allowed
            b.clock.advance(2 * MIN)
        # pushes at 0, 2, .., 10 minutes; now 12: the 3 newest are kept (6, 8, 10)
        r = await reserve(b, vel(3, 60, 2))
        assert not r.allowed and "(3 in the window)" in r.message
        assert r.retry_after_seconds == pytest.approx(54 * MIN, abs=SLACK)
        assert (await reserve(b, vel(4, 60, 3))).allowed  # the three older ones are gone
    finally:
        counters_redis._definition.cache_clear()


async def test_daily_cap_keeps_counting_when_its_cap_or_zone_changes(backend: Backend) -> None:
    """A new version with another cap counts the same day's pushes; one in another zone
    whose local date is still the same day keeps the day's count (the key is the date)."""
    b = backend
    b.clock.set(1_795_428_017.25)  # 2026-11-23 10:00 UTC; 11:00 in Berlin, same date
    for _ in range(3):
        assert (await reserve(b, cap(5, counter_id="capc", rid="capc@v1"))).allowed
    r = await reserve(b, cap(3, counter_id="capc", rid="capc@v2"))
    assert not r.allowed and r.code == "DAILY_CAP_EXCEEDED"
    assert (await reserve(b, cap(4, tz="Europe/Berlin", counter_id="capc", rid="capc@v3"))
            ).allowed
    assert not (await reserve(b, cap(4, tz="Europe/Berlin", counter_id="capc",
                                      rid="capc@v3"))).allowed


def test_rule_history_is_validated() -> None:
    with pytest.raises(ValueError, match="history_seconds"):
        cool(10, 1, history=-1)
    with pytest.raises(ValueError, match="history_seconds"):
        cool(10, 1, history=float("nan"))
    assert cool(10, 1, history=5).rescoped("agent:a9").history_seconds == 5


def test_memory_store_history_setting() -> None:
    assert MemoryCounterStore(history_seconds=60).history_seconds == 60


async def test_two_windows_of_one_counter_in_one_call(backend: Backend) -> None:
    """Each rule counts its own window, even when two versions of one counter meet in one
    call (Redis once kept the first rule's count for the key for the whole call)."""
    b = backend
    for _ in range(3):
        assert (await reserve(b, vel(3, 10, 1))).allowed
        b.clock.advance(MIN)
    b.clock.advance(17 * MIN)  # pushes at 0, 1, 2 minutes; now 20 minutes
    assert (await reserve(b, vel(5, 60, 2), vel(2, 5, 3))).allowed  # 3 of 5; 0 of 2
    r = await reserve(b, vel(9, 60, 2), vel(1, 5, 3))  # 4 of 9; 1 of 1
    assert not r.allowed and r.denied_rule_id == "vel@v3" and "(1 in the window)" in r.message
    res = await b.store.reserve_batch(b.tenant, [[vel(5, 60, 2)], [vel(2, 5, 3)],
                                                 [vel(5, 60, 2)]], timeout=2.0)
    # 4 in the hour: the first takes the 5th; v3 sees 2 in 5 minutes; then 5 of 5
    assert [x.allowed for x in res] == [True, False, False]
    assert "(2 in the window)" in res[1].message and "(5 in the window)" in res[2].message
