"""Memory and Redis stores, fed the same random operations, give the same answers.

Hypothesis draws sequences of reserves, batches, events and clock steps. Event times sit
on whole seconds (plus T0's quarter second) and every rule duration ends on a half second,
so no comparison lands within a quarter second of an edge, where the Redis store's shifted
server clock (which also runs on by each call's real latency) could legitimately differ
from the memory store's frozen one.
"""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterSettings,
    ManualClock,
    MemoryCounterStore,
    ReserveResult,
)
from pdp.counters.redis_store import RedisCounterStore, make_client
from tests.counters.conftest import T0, new_tenant
from tests.support.procs import RedisServer

BUCKET, RETENTION = 7, 400
HISTORY = 400  # s: past any program's span (keys expire on Redis's real clock, not the test's)

RULES = [
    CounterRule("cap", CounterKind.DAILY_CAP, "tenant:t", max_count=6, timezone="Asia/Kolkata"),
    CounterRule("cool-a", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=5.5),
    CounterRule("cool-b", CounterKind.COOLDOWN, "agent:b", min_interval_seconds=3.5),
    CounterRule("vel", CounterKind.VELOCITY, "tenant:t", max_count=3, window_seconds=10.5),
    CounterRule("vel-a", CounterKind.VELOCITY, "agent:a", max_count=1, window_seconds=4.5),
    CounterRule("rb", CounterKind.ROLLBACK_RATE, "group:g", window_seconds=30.5,
                threshold_percent=40, min_deployments=2),
    CounterRule("step", CounterKind.MIN_STEP_DURATION, "rollout:r", min_interval_seconds=6.5),
    # other versions of counters above (the same counter_id, another window): the stores
    # keep pushes for HISTORY, longer than any window here, so each sees the other's
    CounterRule("cool-a@v2", CounterKind.COOLDOWN, "agent:a", min_interval_seconds=12.5,
                counter_id="cool-a"),
    CounterRule("vel@v2", CounterKind.VELOCITY, "tenant:t", max_count=5, window_seconds=25.5,
                counter_id="vel"),
    CounterRule("vel@v3", CounterKind.VELOCITY, "tenant:t", max_count=2, window_seconds=3.5,
                counter_id="vel"),
]
SCOPES = ["group:g", "rollout:r", "tenant:t"]

rule_sets = st.lists(st.sampled_from(range(len(RULES))), min_size=0, max_size=4)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), rule_sets),
        st.tuples(st.just("batch"), st.lists(rule_sets, min_size=1, max_size=5)),
        st.tuples(st.just("event"), st.sampled_from(list(CounterEventKind)),
                  st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2)),
        st.tuples(st.just("sleep"), st.integers(min_value=0, max_value=6)),
    ),
    min_size=5,
    max_size=60,
)


def same(a: ReserveResult, b: ReserveResult) -> bool:
    if (a.allowed, a.code, a.denied_rule_id, a.message) != (b.allowed, b.code, b.denied_rule_id,
                                                            b.message):
        return False
    if a.retry_after_seconds is None or b.retry_after_seconds is None:
        return a.retry_after_seconds == b.retry_after_seconds
    # Redis time runs on by each call's real latency (ms, more on a loaded CI box)
    return abs(a.retry_after_seconds - b.retry_after_seconds) < 0.3


async def _run(url: str, program: list[tuple]) -> None:  # type: ignore[type-arg]
    clock = ManualClock(T0)
    mem = MemoryCounterStore(clock, event_bucket_seconds=BUCKET, event_retention_seconds=RETENTION,
                             history_seconds=HISTORY)
    red = RedisCounterStore(
        make_client(CounterSettings(url=url)), clock=clock, event_bucket_seconds=BUCKET,
        event_retention_seconds=RETENTION, server_time_offset=lambda: clock.now() - time.time(),
        history_seconds=HISTORY,
    )
    tenant = new_tenant()
    try:
        for op in program:
            if op[0] == "reserve":
                rules = [RULES[i] for i in op[1]]
                a = await mem.reserve(tenant, rules, timeout=2)
                b = await red.reserve(tenant, rules, timeout=2)
                assert same(a, b), (op, a, b)
            elif op[0] == "batch":
                items = [[RULES[i] for i in item] for item in op[1]]
                ra = await mem.reserve_batch(tenant, items, timeout=2)
                rb = await red.reserve_batch(tenant, items, timeout=2)
                assert all(same(x, y) for x, y in zip(ra, rb, strict=True)), (op, ra, rb)
            elif op[0] == "event":
                await mem.record_event(tenant, op[1], op[2], timeout=2)
                await red.record_event(tenant, op[1], op[2], timeout=2)
            else:
                clock.advance(op[1])
    finally:
        await red.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
def test_memory_and_redis_agree(redis_srv: RedisServer, program: list[tuple]) -> None:  # type: ignore[type-arg]
    asyncio.run(_run(redis_srv.url, program))
