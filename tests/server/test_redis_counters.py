"""Counters in Redis, through real `pdp serve` processes sharing one real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.procs import RedisServer

POLICY = "tenant: acme\nname: rollout-cap\nrule: {daily_cap: {max_count: 10, scope: rollout}}\n"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


def start_servers(tmp_path: Path, redis: RedisServer, n: int,
                  *extra: str) -> list[PdpServer]:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "cap.yaml").write_text(POLICY)
    servers = []
    for i in range(n):
        work = tmp_path / f"s{i}"
        work.mkdir()
        servers.append(PdpServer(work, policy_dir=policies,
                                 args=["--redis-url", redis.url, *extra]).start(wait=False))
    for s in servers:
        s.wait_serving()
    return servers


def test_four_servers_64_callers_race_for_a_cap_of_10(tmp_path: Path,
                                                      redis: RedisServer) -> None:
    # Generous budgets: this test is about atomicity on a loaded 2-core machine, not latency.
    servers = start_servers(tmp_path, redis, 4, "--deadline-ms", "2000",
                            "--redis-timeout-ms", "1000")
    try:
        async def round_(rollout: str) -> int:
            channels = [grpc.aio.insecure_channel(s.address) for s in servers]
            stubs = [dgrpc.DecisionServiceStub(ch) for ch in channels]
            try:
                reqs = [push_request("acme", f"agent-{i}", config_yaml="a: 1",
                                     rollout={"id": rollout}) for i in range(64)]
                resps = await asyncio.gather(*[stubs[i % 4].CheckPush(r, timeout=10)
                                               for i, r in enumerate(reqs)])
            finally:
                for ch in channels:
                    await ch.close()
            denied = [r.decision for r in resps if r.decision.outcome != cpb.OUTCOME_ALLOW]
            codes = {cpb.ReasonCode.Name(d.reasons[0].code) for d in denied}
            assert codes == {"REASON_CODE_DAILY_CAP_EXCEEDED"}, codes
            return 64 - len(denied)

        for n in range(20):
            assert asyncio.run(round_(f"rollout-{n}")) == 10
    finally:
        for s in servers:
            s.stop()


def test_redis_outage_denies_promptly_and_recovers(tmp_path: Path, redis: RedisServer) -> None:
    [server] = start_servers(tmp_path, redis, 1)
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            counter = iter(range(10**6))

            def ask() -> tuple[cpb.Decision, float]:
                started = time.monotonic()
                r = stub.CheckPush(push_request("acme", "a", config_yaml="a: 1",
                                                rollout={"id": f"r{next(counter)}"}), timeout=5)
                return r.decision, time.monotonic() - started

            assert ask()[0].outcome == cpb.OUTCOME_ALLOW
            redis.kill()
            outage = [ask() for _ in range(30)]
            for decision, latency in outage:
                assert decision.outcome == cpb.OUTCOME_DENY
                assert decision.reasons[0].code == cpb.REASON_CODE_COUNTER_STORE_UNAVAILABLE
                assert decision.elapsed.ToNanoseconds() / 1e9 <= 0.05 + 0.01  # the deadline
                assert latency < 1.0
            redis.start()
            back = time.monotonic()
            while ask()[0].outcome != cpb.OUTCOME_ALLOW:
                assert time.monotonic() - back < 2.0, "allows did not resume within 2 s"
                time.sleep(0.02)
        assert server.proc is not None and server.proc.poll() is None  # stayed up
    finally:
        server.stop()
