"""Counter reservation latency against a plain Redis INCR round trip, in the same run.

Starts a throwaway redis-server on a free loopback port (or uses --url), then measures
sequential round trips, interleaved in blocks so load drift hits both alike:

* ``INCR``: the floor, one trivial command sent the way a normal client would, through a
  plain redis-py asyncio client (hiredis parser, the store's pool settings) -- NOT through
  the store's own FastRedis transport;
* ``reserve``: one decision (DAILY_CAP per tenant + COOLDOWN per agent + VELOCITY per
  tenant) through ``RedisCounterStore`` -- one EVALSHA (on a standalone server the store
  sends it over its FastRedis connections: raw asyncio transports + hiredis);
* ``reserve_batch``: a 1 000-agent rollout step in one call.

Usage: python bench/counters_bench.py [--url redis://...] [-n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hiredis
import redis

from pdp.counters import CounterKind, CounterRule, CounterSettings
from pdp.counters.redis_store import RedisCounterStore, make_client


async def interleaved(
    n: int, fns: dict[str, Callable[[int], Awaitable[object]]], block: int = 100
) -> dict[str, list[float]]:
    """Time each function ``n`` times, alternating blocks so load drift hits all alike."""
    for fn in fns.values():
        for i in range(200):  # warm up connections, script cache, day tables
            await fn(i)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for b in range(0, n, block):
        for name, fn in fns.items():
            for i in range(b, min(n, b + block)):
                t0 = time.perf_counter()
                await fn(i)
                out[name].append(time.perf_counter() - t0)
    return out


def summary(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p50, p99 = xs[len(xs) // 2], xs[int(len(xs) * 0.99)]
    mean = statistics.mean(xs)
    return f"{name:<28} p50 {p50 * 1e6:8.1f} µs  p99 {p99 * 1e6:8.1f} µs  mean {mean * 1e6:8.1f} µs"


async def run(url: str, n: int) -> None:
    settings = CounterSettings(url=url)
    store = RedisCounterStore.from_settings(settings)
    # the same store on redis-py for every call (what Redis Cluster uses), for comparison
    slow = RedisCounterStore(make_client(settings), fast_path=False)
    raw = make_client(settings)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    decision = [
        CounterRule("cap@v1", CounterKind.DAILY_CAP, "tenant:t", max_count=10**9,
                    timezone="Europe/Berlin"),
        CounterRule("vel@v1", CounterKind.VELOCITY, "tenant:t", max_count=10**9,
                    window_seconds=60),
    ]

    async def incr(i: int) -> object:
        return await raw.incr(f"pdp:{{{tenant}}}:incr")

    agents = itertools.count()

    async def reserve(i: int) -> object:
        agent = next(agents)
        rules = [*decision, CounterRule("cool@v1", CounterKind.COOLDOWN, f"agent:{agent}",
                                        min_interval_seconds=60)]
        r = await store.reserve(tenant, rules, timeout=1.0)
        assert r.allowed, r
        return r

    async def reserve_redis_py(i: int) -> object:
        agent = next(agents)
        rules = [*decision, CounterRule("cool@v1", CounterKind.COOLDOWN, f"agent:{agent}",
                                        min_interval_seconds=60)]
        r = await slow.reserve(tenant, rules, timeout=1.0)
        assert r.allowed, r
        return r

    try:
        t = await interleaved(
            n, {"incr": incr, "reserve": reserve, "reserve_redis_py": reserve_redis_py}
        )
        fast = "FastRedis" if store._fast is not None else "redis-py"
        print(f"INCR: plain redis-py {redis.__version__} asyncio client (hiredis "
              f"{hiredis.__version__}); reserve: RedisCounterStore via {fast}")
        print(summary("INCR round trip", t["incr"]))
        print(summary("reserve (3 rules, 1 EVALSHA)", t["reserve"]))
        ratio = statistics.median(t["reserve"]) / statistics.median(t["incr"])
        print(f"ratio reserve/INCR (p50)      {ratio:.2f}   (target <= 1.5)")
        print(summary("reserve via redis-py path", t["reserve_redis_py"]))
        ratio = statistics.median(t["reserve_redis_py"]) / statistics.median(t["incr"])
        print(f"ratio redis-py path/INCR      {ratio:.2f}   (Redis Cluster uses this path)")

        times = []
        for run_no in range(10):
            step = [  # a fresh counter per run, so every run allows all 1 000 agents
                [CounterRule(f"stepcap-{run_no}", CounterKind.DAILY_CAP, "tenant:t",
                             max_count=10**9),
                 CounterRule(f"push-{run_no}", CounterKind.VELOCITY, f"agent:{a}", max_count=3,
                             window_seconds=3600),
                 CounterRule(f"cool-{run_no}", CounterKind.COOLDOWN, f"agent:{a}",
                             min_interval_seconds=600)]
                for a in range(1000)
            ]
            t0 = time.perf_counter()
            res = await store.reserve_batch(tenant + "-step", step, timeout=5.0)
            times.append(time.perf_counter() - t0)
        allowed = sum(r.allowed for r in res)
        print(f"1000-agent step reserve_batch  p50 {statistics.median(times) * 1e3:7.2f} ms   "
              f"min {min(times) * 1e3:7.2f} ms   (3 rules/agent; {allowed} allowed)")
    finally:
        await store.close()
        await slow.close()
        await raw.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", help="use this Redis instead of a throwaway redis-server")
    ap.add_argument("-n", type=int, default=5000, help="round trips per measurement")
    args = ap.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.n))
        return
    from tests.support.procs import RedisServer

    srv = RedisServer().start()
    try:
        asyncio.run(run(srv.url, args.n))
    finally:
        srv.close()


if __name__ == "__main__":
    main()
