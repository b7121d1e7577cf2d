"""Memory-store specifics: state disappears once every window has passed."""

from __future__ import annotations

from pdp.counters import CounterEventKind, CounterKind, CounterRule, ManualClock
from pdp.counters.memory import MemoryCounterStore

T0 = 1_795_428_000.0


async def test_nothing_is_left_behind_once_windows_pass() -> None:
    clock = ManualClock(T0)
    store = MemoryCounterStore(clock, event_bucket_seconds=60, event_retention_seconds=3600)
    rules = [
        CounterRule("c", CounterKind.DAILY_CAP, "tenant:t", max_count=5, timezone="Asia/Tokyo"),
        CounterRule("d", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=600),
        CounterRule("v", CounterKind.VELOCITY, "agent:a", max_count=3, window_seconds=120),
    ]
    for i in range(50):
        await store.reserve(f"t{i % 5}", rules, timeout=1)
        for kind in CounterEventKind:
            await store.record_event(f"t{i % 5}", kind, ["tenant:t", "rollout:r"], timeout=1)
        clock.advance(30)
    assert store.keys()
    # the day, the event retention, and the history cooldown and velocity keep (a week)
    clock.advance(max(86400, store.history_seconds) + 3600 + 60)
    assert store.keys() == []
    assert store.sweep() == 0


async def test_periodic_sweep_bounds_memory_without_explicit_calls() -> None:
    clock = ManualClock(T0)
    # no history beyond the rule's window (cooldowns are otherwise kept a day by default)
    store = MemoryCounterStore(clock, sweep_interval=60, history_seconds=0)
    for i in range(1000):
        rule = CounterRule("d", CounterKind.COOLDOWN, f"agent:{i}", min_interval_seconds=10)
        await store.reserve("t", [rule], timeout=1)
    assert len(store._data) == 1000
    clock.advance(120)
    await store.reserve("t", [], timeout=1)  # any call past the sweep interval sweeps
    assert len(store._data) == 0


async def test_an_event_key_is_forgotten_after_the_retention() -> None:
    clock = ManualClock(T0)
    store = MemoryCounterStore(clock, event_bucket_seconds=60, event_retention_seconds=3600)
    kind = CounterEventKind.ROLLBACK
    assert await store.record_event("t", kind, ["tenant:t"], timeout=1, event_key="k")
    clock.advance(3599)
    assert not await store.record_event("t", kind, ["tenant:t"], timeout=1, event_key="k")
    clock.advance(2)
    assert await store.record_event("t", kind, ["tenant:t"], timeout=1, event_key="k")


async def test_window_edges_are_exact() -> None:
    """A velocity push exactly a window old has left the window, and a cooldown is over
    exactly its interval after the push: a retry hint is neither early nor late (the Redis
    script compares the same way: ZCOUNT from ``(now - window``, ``now - last < interval``)."""
    clock = ManualClock(T0)
    store = MemoryCounterStore(clock)
    vel = CounterRule("v", CounterKind.VELOCITY, "tenant:t", max_count=1, window_seconds=60)
    cool = CounterRule("c", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=60)
    assert (await store.reserve("t", [vel], timeout=1)).allowed
    assert (await store.reserve("t", [cool], timeout=1)).allowed
    clock.advance(59.999)
    for rule in (vel, cool):
        r = await store.reserve("t", [rule], timeout=1)
        assert not r.allowed and r.retry_after_seconds == 0.001, r
    clock.advance(0.001)
    assert (await store.reserve("t", [vel], timeout=1)).allowed
    assert (await store.reserve("t", [cool], timeout=1)).allowed
